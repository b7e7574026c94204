@testable import EdgeProxy
import EdgeTestSupport
import Foundation
import NIOCore
import NIOPosix
import XCTest

/// The per-loop deadline heap that replaced a NIO timer per client connection, on a
/// real event loop, and the idle timeout it carries, on a real keep-alive connection.
final class LoopDeadlinesTests: XCTestCase {
    final class Owner: DeadlineOwner, @unchecked Sendable {
        var deadlineSlot = -1
        let id: Int
        let deadline: NIODeadline
        /// Moved later while queued, as a handler's idle deadline moves with each request.
        var movedTo: NIODeadline?
        var fired: [NIODeadline] = []
        var due: NIODeadline { self.movedTo ?? self.deadline }

        init(id: Int, deadline: NIODeadline) {
            self.id = id
            self.deadline = deadline
        }

        func deadlineReached(now: NIODeadline) {
            self.fired.append(now)
            self.reached?(self, now)
        }

        var reached: ((Owner, NIODeadline) -> Void)?
    }

    func testDeadlinesFireInOrderAfterTheirTimeAndCancelledOnesNever() throws {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        defer { try? group.syncShutdownGracefully() }
        let loop = group.next()
        let done = loop.makePromise(of: [Int].self)
        let start = NIODeadline.now()
        var generator = SystemRandomNumberGenerator()
        let owners = (0..<300).map { Owner(id: $0, deadline: start + .milliseconds(Int64.random(in: 20...300, using: &generator))) }
        for owner in owners where owner.id % 3 == 1 && owner.id % 2 == 0 {
            owner.movedTo = owner.deadline + .milliseconds(150)
        }
        let early = Owner(id: 1_000, deadline: start + .milliseconds(5))
        // Queued for 280 ms, then asked for 12 ms: moved earlier (an idle timeout
        // shorter than the header timeout the connection was queued with).
        let sooner = Owner(id: 1_001, deadline: start + .milliseconds(12))
        loop.execute {
            let deadlines = LoopDeadlines(eventLoop: loop)
            var order: [Int] = []
            var pending = 0
            func reached(_ owner: Owner, _ now: NIODeadline) {
                if let moved = owner.movedTo, now < moved {
                    deadlines.schedule(owner, at: moved)  // the lazy re-queue a handler does
                    return
                }
                order.append(owner.id)
                pending -= 1
                if pending == 0 {
                    XCTAssertEqual(deadlines.count, 0, "nothing left queued")
                    done.succeed(order)
                }
            }
            for owner in owners + [early, sooner] {
                owner.reached = reached
            }
            for owner in owners {
                deadlines.schedule(owner, at: owner.deadline)
                pending += 1
            }
            for owner in owners where owner.id % 3 == 0 {
                deadlines.cancel(owner)
                deadlines.cancel(owner)  // a second cancel is harmless
                pending -= 1
            }
            // A new earliest deadline after the timer was armed for a later one.
            deadlines.schedule(early, at: early.deadline)
            deadlines.schedule(sooner, at: start + .milliseconds(280))
            deadlines.schedule(sooner, at: sooner.deadline)
            deadlines.schedule(sooner, at: start + .milliseconds(290))  // later: stays at 12 ms
            pending += 2
        }
        let order = try done.futureResult.wait()
        let all = owners + [early, sooner]
        XCTAssertEqual(order.count, 202, "every owner not cancelled fired once for good")
        for owner in all {
            XCTAssertEqual(owner.deadlineSlot, -1)
            if owner.id < 1_000 && owner.id % 3 == 0 {
                XCTAssertTrue(owner.fired.isEmpty, "cancelled owner \(owner.id) fired")
                continue
            }
            XCTAssertEqual(owner.fired.count, owner.movedTo == nil ? 1 : 2, "owner \(owner.id)")
            XCTAssertGreaterThanOrEqual(owner.fired.last ?? start, owner.due, "owner \(owner.id) fired before its deadline")
        }
        // Owners fire in the order of the deadlines they were last queued with.
        let byID = Dictionary(uniqueKeysWithValues: all.map { ($0.id, $0) })
        let dues = order.map { byID[$0]!.due }
        XCTAssertEqual(dues, dues.sorted(), "fired in deadline order")
        XCTAssertEqual(Array(order.prefix(2)), [1_000, 1_001], "the earliest deadlines, queued last, fired first")
    }

    /// The start of the client scripts below: a connection to the port in argv[1], and
    /// `read_status`, which reads one whole response (Content-Length framed) and returns its status.
    private static let pythonClient = """
        import json, socket, sys, time
        s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=10)
        def read_status(s):
            data = b""
            while b"\\r\\n\\r\\n" not in data:
                data += s.recv(65536)
            head, body = data.split(b"\\r\\n\\r\\n", 1)
            length = next(int(l.split(b":")[1]) for l in head.split(b"\\r\\n") if l.lower().startswith(b"content-length:"))
            while len(body) < length:
                body += s.recv(65536)
            return head.split(b" ")[1].decode()

        """

    /// A keep-alive client connection is closed `timeouts.idle` after its last response,
    /// and requests in between move that deadline (the lazy re-queue).
    func testKeepAliveConnectionsCloseAfterTheIdleTimeoutAndRequestsMoveIt() async throws {
        let harness = try await GatewayHarness.start { port in
            """
            listeners:
              - name: http
                address: "127.0.0.1:0"
                timeouts: { idle: 1s }
            upstreams: { app: { backends: ["127.0.0.1:\(port)"] } }
            routes: [ { upstream: app } ]
            admin: { address: "127.0.0.1:0" }
            """
        }
        let script = Self.pythonClient + """
            def exchange():
                s.sendall(b"GET / HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n")
                return read_status(s)
            statuses = []
            for _ in range(6):  # 2.5 s of requests 0.5 s apart: longer than the idle timeout
                statuses.append(exchange())
                time.sleep(0.5)
            # From before the last request: the idle timer starts later (when the response is
            # written), so a client slow to read the response cannot make the close look early.
            last = time.time()
            statuses.append(exchange())
            closed = s.recv(1) == b""
            print(json.dumps({"statuses": statuses, "closed": closed, "closed_after": round(time.time() - last, 2)}))
            """
        let result = try Shell.run(["python3", "-c", script, "\(harness.port("http"))"], timeout: 30)
        let line = result.stdout.split(separator: "\n").last.map(String.init) ?? ""
        let json = (try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any]) ?? ["error": result.stderr]
        XCTAssertEqual(json["statuses"] as? [String], Array(repeating: "200", count: 7), "requests 0.5 s apart keep the connection: \(json)")
        XCTAssertEqual(json["closed"] as? Bool, true, "\(json)")
        let after = json["closed_after"] as? Double ?? -1
        XCTAssertTrue((0.9...3).contains(after), "closed about 1 s after the last response: \(json)")
        await harness.shutdown()
    }

    /// A request after the first has the header timeout from its first bytes, like the
    /// first request (nginx's `client_header_timeout`), not the longer idle timeout, and
    /// bytes trickling in do not extend it.
    func testALaterRequestHeadTricklingInGets408AfterTheHeaderTimeout() async throws {
        let harness = try await GatewayHarness.start { port in
            """
            listeners:
              - name: http
                address: "127.0.0.1:0"
                timeouts: { header: 1s, idle: 30s }
            upstreams: { app: { backends: ["127.0.0.1:\(port)"] } }
            routes: [ { upstream: app } ]
            admin: { address: "127.0.0.1:0" }
            """
        }
        let script = Self.pythonClient + """
            s.sendall(b"GET / HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n")
            first = read_status(s)
            time.sleep(0.5)  # idle between requests: the idle timeout (30 s) runs
            started = time.time()
            s.sendall(b"GET /second HTTP/1.1\\r\\n")
            s.settimeout(0.3)
            answer = b""
            sent = 0
            while time.time() - started < 8:
                try:
                    chunk = s.recv(65536)
                except socket.timeout:
                    s.sendall(b"X-Slow-%d: y\\r\\n" % sent)  # a field every 0.3 s, never the blank line
                    sent += 1
                    continue
                except ConnectionResetError:
                    break
                if not chunk:
                    break
                answer += chunk
            print(json.dumps({"first": first, "answer": answer.decode(errors="replace")[:40],
                              "after": round(time.time() - started, 2), "fields_sent": sent}))
            """
        let result = try Shell.run(["python3", "-c", script, "\(harness.port("http"))"], timeout: 30)
        let line = result.stdout.split(separator: "\n").last.map(String.init) ?? ""
        let json = (try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any]) ?? ["error": result.stderr]
        XCTAssertEqual(json["first"] as? String, "200", "\(json)")
        XCTAssertTrue((json["answer"] as? String ?? "").hasPrefix("HTTP/1.1 408"), "the slow second head gets 408: \(json)")
        let after = json["after"] as? Double ?? -1
        XCTAssertTrue((0.9...3).contains(after), "answered about 1 s after the head's first bytes, not extended by the trickle: \(json)")
        XCTAssertEqual(harness.upstream.requestCount, 1, "the incomplete request never reached the upstream")
        await harness.shutdown()
    }
}
