// swift-tools-version:6.0
import PackageDescription

let package = Package(
    name: "edge-gateway",
    platforms: [.macOS(.v14)],
    products: [
        .executable(name: "edge-gateway", targets: ["edge-gateway"])
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-nio.git", from: "2.101.3"),
        .package(url: "https://github.com/apple/swift-nio-extras.git", from: "1.35.2"),
        .package(url: "https://github.com/apple/swift-nio-http2.git", from: "1.46.0"),
        .package(url: "https://github.com/apple/swift-atomics.git", from: "1.3.0"),
        .package(url: "https://github.com/apple/swift-log.git", from: "1.16.2"),
        .package(url: "https://github.com/apple/swift-argument-parser.git", from: "1.8.2"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle.git", from: "2.13.0"),
        .package(url: "https://github.com/jpsim/Yams.git", from: "6.2.2"),
        .package(url: "https://github.com/swift-server/swift-prometheus.git", from: "2.4.1"),
    ],
    targets: [
        // The system OpenSSL 3 (apt: libssl-dev). Headers only; no logic.
        .systemLibrary(
            name: "COpenSSL",
            pkgConfig: "openssl",
            providers: [.apt(["libssl-dev"])]
        ),
        // Non-inline wrappers for the OpenSSL macros Swift cannot import. No logic.
        .target(name: "CEdgeShims", dependencies: ["COpenSSL"]),
        // The cmsg macros of <sys/socket.h> as functions, for handing listening sockets over. No logic.
        .target(name: "CSocketShims"),
        // The TLS engine: SSL_CTX/SSL owners and the NIO handler over a ByteBuffer BIO.
        .target(
            name: "EdgeTLS",
            dependencies: [
                "COpenSSL", "CEdgeShims",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOTLS", package: "swift-nio"),
                .product(name: "Atomics", package: "swift-atomics"),
            ],
            swiftSettings: dataPathSettings
        ),
        // Certificate lineages, validated snapshots, SNI selection and the inotify watcher.
        .target(
            name: "EdgeCertificates",
            dependencies: [
                "EdgeTLS",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "Atomics", package: "swift-atomics"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        // The HTTP/1.1 reverse proxy: routing, load balancing, upstream pool.
        .target(
            name: "EdgeProxy",
            dependencies: [
                "EdgeTLS",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOHTTP2", package: "swift-nio-http2"),
                .product(name: "NIOHPACK", package: "swift-nio-http2"),
                .product(name: "NIOTLS", package: "swift-nio"),
                .product(name: "Atomics", package: "swift-atomics"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: dataPathSettings
        ),
        // Composition root: configuration, listeners, admin endpoint, lifecycle.
        .target(
            name: "EdgeGateway",
            dependencies: [
                "EdgeTLS", "EdgeCertificates", "EdgeProxy", "CSocketShims",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOExtras", package: "swift-nio-extras"),
                .product(name: "NIOHTTP2", package: "swift-nio-http2"),
                .product(name: "NIOTLS", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "UnixSignals", package: "swift-service-lifecycle"),
                .product(name: "Yams", package: "Yams"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "Atomics", package: "swift-atomics"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
            ]
        ),
        // The command line: parses arguments, bootstraps logging, runs the service group.
        .executableTarget(
            name: "edge-gateway",
            dependencies: [
                "EdgeGateway", "EdgeCertificates",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ]
        ),
        // Helpers shared by the test targets: test-time PKI, processes, a gateway harness.
        .target(
            name: "EdgeTestSupport",
            dependencies: [
                "EdgeGateway", "EdgeTLS",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
            ],
            path: "Tests/EdgeTestSupport"
        ),
        .testTarget(
            name: "EdgeTLSTests",
            dependencies: [
                "EdgeTLS", "EdgeTestSupport", "CEdgeShims",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOEmbedded", package: "swift-nio"),
                .product(name: "NIOTLS", package: "swift-nio"),
            ]
        ),
        .testTarget(
            name: "EdgeGatewayTests",
            dependencies: [
                "EdgeGateway", "EdgeTLS", "EdgeCertificates", "EdgeProxy", "EdgeTestSupport", "CSocketShims",
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
    ],
    swiftLanguageModes: [.v6]
)

/// The per-request path (TLS engine, proxy) skips dynamic exclusivity checks in
/// release builds: they cost about 2 % of a proxied request (swift_beginAccess in
/// `perf`). Debug builds, which the tests run, keep them and still catch violations.
var dataPathSettings: [SwiftSetting] {
    [.unsafeFlags(["-enforce-exclusivity=unchecked"], .when(configuration: .release))]
}

// libFuzzer targets, one per parser (`bench/fuzz`), declared only when EDGE_FUZZ is set:
// they link libFuzzer's main (`-sanitize=fuzzer`), so an ordinary build could not link them.
if Context.environment["EDGE_FUZZ"] != nil {
    let nio: [Target.Dependency] = [
        .product(name: "NIOCore", package: "swift-nio"),
        .product(name: "NIOHTTP2", package: "swift-nio-http2"),
        .product(name: "NIOHPACK", package: "swift-nio-http2"),
    ]
    let fuzzTargets: [(String, [Target.Dependency])] = [
        ("FuzzHTTP1Request", ["EdgeProxy"]), ("FuzzHTTP1Response", ["EdgeProxy"] + nio), ("FuzzBodyFramer", ["EdgeProxy"] + nio),
        ("FuzzProxyProtocol", ["EdgeProxy"]), ("FuzzHTTP2Bridge", ["EdgeProxy"] + nio), ("FuzzHTTP2Upstream", ["EdgeProxy"] + nio), ("FuzzPathNormalization", ["EdgeProxy"]),
        ("FuzzXFCC", ["EdgeTLS"]), ("FuzzConfig", ["EdgeGateway"]), ("FuzzCertbotRenewal", ["EdgeCertificates"]), ("FuzzCRL", ["EdgeTLS"]), ("FuzzOCSPResponse", ["EdgeTLS"]), ("FuzzHTTP2Frames", ["EdgeProxy"] + nio),
    ]
    package.targets.append(.target(name: "CFuzzDriver", path: "Fuzz/CFuzzDriver"))
    for (name, dependencies) in fuzzTargets {
        package.targets.append(.executableTarget(name: name, dependencies: dependencies + ["CFuzzDriver"], path: "Fuzz/\(name)"))
    }
}
