import EdgeCertificates
import EdgeProxy
import EdgeTLS
import Logging
import NIOCore

extension PlanBuilder {
    /// The routes in order, each with one action: an upstream group, a redirect or a
    /// static directory.
    mutating func router(groups: [String: UpstreamGroup]) -> Router {
        var routes: [Router.Route] = []
        let listenerNames = Set(config.listeners.map(\.name))
        for (index, route) in config.routes.enumerated() {
            let path = "routes[\(index)]"
            if let prefix = route.pathPrefix, !prefix.hasPrefix("/") {
                problems.append("\(path).path_prefix: must start with '/'")
            } else if let prefix = route.pathPrefix {
                // Requests are matched in normal form: a prefix that is not would match nothing.
                switch PathNormalization.normalize(Array(prefix.utf8)) {
                case .unchanged:
                    break
                case .normalized(let normal):
                    problems.append("\(path).path_prefix: '\(prefix)' never matches, requests are matched in normal form: write '\(String(decoding: normal, as: UTF8.self))'")
                case .malformed, .ambiguous:
                    problems.append("\(path).path_prefix: '\(prefix)' is not a path a request can have (a malformed %, or a dot segment behind %2F, \\ or ;)")
                }
            }
            if let name = route.listener, !listenerNames.contains(name) {
                problems.append("\(path).listener: no listener named '\(name)' (\(knownNames(config.listeners.map(\.name), kind: "listeners")))")
            }
            if let max = route.maxRequestBodyBytes, max < 1 {
                problems.append("\(path).max_request_body_bytes: must be at least 1, got \(max)")
            }
            let actions = [route.upstream != nil, route.redirect != nil, route.root != nil].filter { $0 }.count
            guard actions == 1 else {
                problems.append("\(path): needs exactly one of upstream, redirect, root (has \(actions == 0 ? "none" : "\(actions)"))")
                continue
            }
            let action: Router.Route.Action
            if let name = route.upstream {
                guard let group = groups[name] else {
                    if config.upstreams[name] == nil {
                        problems.append("\(path).upstream: no upstream named '\(name)' (\(knownNames(config.upstreams.keys.sorted(), kind: "upstreams")))")
                    }
                    continue
                }
                action = .upstream(group)
            } else if let redirect = route.redirect {
                if !Redirect.statuses.contains(redirect.status) {
                    problems.append("\(path).redirect.status: must be one of \(Redirect.statuses.sorted().map(String.init).joined(separator: ", ")), got \(redirect.status)")
                }
                if let port = redirect.port, !(1...65535).contains(port) {
                    problems.append("\(path).redirect.port: must be 1-65535, got \(port)")
                }
                if let host = redirect.host, Redirect(host: host).location(requestHost: nil, target: "/") == nil {
                    problems.append("\(path).redirect.host: '\(host)' is not a DNS name or an IP address")
                }
                action = .redirect(Redirect(scheme: redirect.scheme.rawValue, host: redirect.host?.lowercased(), port: redirect.port, status: redirect.status))
            } else {
                let directory = resolve(route.root!)
                if let problem = StaticRoot.directoryProblem(directory) {
                    problems.append("\(path).root: \(directory): \(problem)")
                }
                action = .root(StaticRoot(directory: directory))
            }
            routes.append(Router.Route(listener: route.listener, host: route.host, pathPrefix: route.pathPrefix, action: action,
                                       maxBodyBytes: route.maxRequestBodyBytes))
        }
        if config.routes.isEmpty { problems.append("routes: at least one route is needed") }
        return Router(routes: routes)
    }
}
