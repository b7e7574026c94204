#!/usr/bin/env python3
"""HTTP/2 abuse for tests, with raw frames over TLS (ALPN h2):
  rapid-reset PORT N   opens N streams, resetting each at once (CVE-2023-44487)
  ping-flood PORT N    sends N PINGs at once (a control-frame flood)
  big-header PORT SIZE sends one request whose header list is SIZE bytes (HPACK bomb shape)
  idle PORT SECONDS    sends one request, then stays silent up to SECONDS waiting for the server
                       to end the idle connection ("idle_closed_after": seconds after the response)
  malformed PORT 0     sends one malformed request per stream (RFC 9113 §8.1.1: CR/LF/NUL in a value,
                       upper case or a colon in a name, connection-specific fields, pseudo-header
                       faults), then one valid request ("rst_streams", "response_streams")
  drain PORT MS        GETs /slow?ms=MS, then reads until the server closes: what a draining gateway
                       sends ("goaway", "goaway_last_stream", "goaway_last_streams": each GOAWAY's,
                       "body", "ended", "closed")
  slow-body PORT LEN   POSTs to / declaring content-length LEN, sends one byte of it and waits
                       for the server ("body": what came back, "rst_codes", "ended")
  trailers PORT 0      POSTs a body of two DATA frames without content-length to /echo, ended by a
                       trailer HEADERS frame ("body": the response body, "ended": END_STREAM seen)
  open-empty PORT 0    POSTs to / declaring content-length 0 without ending the stream, then waits
                       ("ended": the response's END_STREAM, "rst_streams": how the server ended it)
  bad-method PORT 0    sends a request with the method "GE(T" (not a token) and one byte of a body, the
                       stream left open ("responses", "rst_streams": how the server ended it)
  slow-window PORT LEN GETs /bytes?n=LEN with a stream window of 0, then opens it by 1 KiB every 200 ms for
                       6 s ("rst_codes", "body": what came meanwhile)
  no-window PORT LEN   GETs /bytes?n=LEN with a stream window of 0 (SETTINGS_INITIAL_WINDOW_SIZE) and never
                       opens it, then waits ("rst_codes", "rst_after": seconds from the request to the reset)
PINGs are answered, as every HTTP/2 client does.
Prints one JSON line: what came back (GOAWAY error code, RST_STREAM codes, responses, closed,
"closed_after": seconds from the last request bytes sent to the server's close)."""
import json, socket, ssl, struct, sys, time

mode, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
ctx.set_alpn_protocols(["h2"])
sock = ctx.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=10), server_hostname="localhost")
assert sock.selected_alpn_protocol() == "h2", sock.selected_alpn_protocol()

def frame(kind, flags, stream, payload=b""):
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", stream) + payload

def literal(name, value):
    # Literal header field without indexing, new name (RFC 7541 6.2.2), 7-bit lengths extended as needed.
    def string(b):
        if len(b) < 127:
            return bytes([len(b)]) + b
        out, rest = bytearray([127]), len(b) - 127
        while rest >= 128:
            out.append((rest % 128) + 128)
            rest //= 128
        out.append(rest)
        return bytes(out) + b
    return b"\x00" + string(name) + string(value)

request = b"\x82\x87\x84" + literal(b":authority", b"localhost")  # GET https /
# no-window: SETTINGS_INITIAL_WINDOW_SIZE (4) = 0, so no response DATA may be sent.
settings = struct.pack(">HI", 4, 0) if mode in ("no-window", "slow-window") else b""
sock.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + frame(4, 0, 0, settings))
out = bytearray()
if mode == "rapid-reset":
    for i in range(n):
        stream = 1 + 2 * i
        out += frame(1, 0x5, stream, request) + frame(3, 0, stream, struct.pack(">I", 8))  # HEADERS, RST_STREAM(CANCEL)
elif mode == "ping-flood":
    for i in range(n):
        out += frame(6, 0, 0, struct.pack(">Q", i))
elif mode == "idle":
    out += frame(1, 0x5, 1, request)
elif mode == "malformed":
    get, https, slash = b"\x82", b"\x87", b"\x84"
    authority = literal(b":authority", b"localhost")
    bad = [
        request + literal(b"x-a", b"1\r\nx-evil: 1"),        # CRLF: a smuggled field
        request + literal(b"x-a", b"1\nx-evil: 1"),           # bare LF
        request + literal(b"x-a", b"1\x00"),                  # NUL
        request + literal(b"X-Upper", b"1"),                  # upper case name
        request + literal(b"x-a:b", b"1"),                    # colon in a name
        request + literal(b"x a", b"1"),                      # space in a name
        request + literal(b"connection", b"close"),           # connection-specific
        request + literal(b"transfer-encoding", b"chunked"),
        request + literal(b"upgrade", b"websocket"),
        request + literal(b"te", b"gzip"),                    # TE other than trailers
        get + https + literal(b"x-a", b"1") + slash + authority,  # pseudo-header after a regular field
        get + https + authority,                              # no :path
        get + slash + authority,                              # no :scheme
        https + slash + authority,                            # no :method
        request + slash,                                      # :path twice
        request + literal(b":foo", b"bar"),                   # unknown pseudo-header
        request + literal(b":status", b"200"),                # response pseudo-header
        get + https + literal(b":path", b"/a HTTP/1.1\r\nx: y") + authority,  # request line injection
        get + https + literal(b":path", b"/a b") + authority,  # space in :path
        get + https + literal(b":path", b"") + authority,     # empty :path
        get + https + literal(b":path", b"internal") + authority,  # not a path (#29)
        get + https + literal(b":path", b"https://evil.test/x") + authority,  # absolute URI overriding :authority
        get + https + literal(b":path", b"*") + authority,    # * for a GET
    ]
    for i, block in enumerate(bad + [request + literal(b"te", b"trailers") + literal(b"cookie", b"a=1")]):
        out += frame(1, 0x5, 1 + 2 * i, block)
    expected = len(bad) + 1
elif mode == "drain":
    out += frame(1, 0x5, 1, b"\x82\x87" + literal(b":path", b"/slow?ms=%d" % n) + literal(b":authority", b"localhost"))
elif mode == "slow-body":
    post = b"\x83\x87\x84" + literal(b":authority", b"localhost") + literal(b"content-length", str(n).encode())
    out += frame(1, 0x4, 1, post) + frame(0, 0, 1, b"x")  # END_HEADERS; one byte of the body
elif mode == "trailers":
    post = b"\x83\x87" + literal(b":path", b"/echo") + literal(b":authority", b"localhost")
    out += frame(1, 0x4, 1, post)  # END_HEADERS, the body follows
    out += frame(0, 0, 1, b"hello ") + frame(0, 0, 1, b"trailers")
    out += frame(1, 0x5, 1, literal(b"x-checksum", b"1"))  # trailers: END_STREAM | END_HEADERS
elif mode == "open-empty":
    post = b"\x83\x87\x84" + literal(b":authority", b"localhost") + literal(b"content-length", b"0")
    out += frame(1, 0x4, 1, post)  # END_HEADERS only: the stream stays open
elif mode == "bad-method":
    bad = literal(b":method", b"GE(T") + b"\x87\x84" + literal(b":authority", b"localhost")
    out += frame(1, 0x4, 1, bad) + frame(0, 0, 1, b"x")  # END_HEADERS only, a byte of a body
elif mode in ("no-window", "slow-window"):
    out += frame(1, 0x5, 1, b"\x82\x87" + literal(b":path", b"/bytes?n=%d" % n) + literal(b":authority", b"localhost"))
else:
    out += frame(1, 0x5, 1, request + literal(b"x-big", b"a" * n))
try:
    sock.sendall(bytes(out))
except OSError:
    pass
result = {"goaway": None, "rst_codes": [], "responses": 0, "closed": False, "rst_streams": {}, "response_streams": [],
          "body": "", "ended": False, "goaway_last_streams": []}
sent = time.time()
buffer = b""
deadline = time.time() + (n + 5 if mode == "idle" else 20 if mode == "drain" else 6 if mode == "slow-window" else 10)
if mode == "slow-window":
    sock.settimeout(0.2)
answered = None
try:
    while time.time() < deadline:
        if mode == "slow-window":
            try:
                data = sock.recv(65536)
            except (socket.timeout, ssl.SSLWantReadError):
                sock.sendall(frame(8, 0, 1, struct.pack(">I", 1024)))  # WINDOW_UPDATE, stream 1, 1 KiB
                continue
        else:
            data = sock.recv(65536)
        if not data:
            result["closed"] = True
            result["closed_after"] = round(time.time() - sent, 2)
            break
        buffer += data
        while len(buffer) >= 9:
            length = int.from_bytes(buffer[:3], "big")
            if len(buffer) < 9 + length:
                break
            kind, flags, header_stream, payload = buffer[3], buffer[4], buffer[5:9], buffer[9:9 + length]
            buffer = buffer[9 + length:]
            if kind == 7:
                result["goaway"] = int.from_bytes(payload[4:8], "big")
                result["goaway_last_stream"] = int.from_bytes(payload[0:4], "big") & 0x7FFFFFFF
                result["goaway_last_streams"].append(result["goaway_last_stream"])
            if kind == 6 and not flags & 0x1:
                try:
                    sock.sendall(frame(6, 0x1, 0, payload))  # PING ACK
                except OSError:
                    pass
            stream_id = int.from_bytes(header_stream, "big") & 0x7FFFFFFF
            if kind == 3:
                result["rst_codes"].append(int.from_bytes(payload[:4], "big"))
                result["rst_after"] = round(time.time() - sent, 2)
                result["rst_streams"][str(stream_id)] = int.from_bytes(payload[:4], "big")
            elif kind == 1:
                result["responses"] += 1
                result["response_streams"].append(stream_id)
                answered = answered or time.time()
            if kind in (0, 1) and stream_id == 1 and flags & 0x1:
                result["ended"] = True
            if kind == 0:
                result["body"] += payload.decode("latin-1")
        if mode == "malformed" and len(result["rst_streams"]) + len(result["response_streams"]) >= expected:
            break
        if mode in ("trailers", "slow-body") and (result["ended"] or result["rst_codes"]):
            break
        if mode in ("open-empty", "no-window", "bad-method") and result["rst_codes"]:
            break
        if mode == "big-header" and (result["responses"] or result["rst_codes"] or result["goaway"] is not None):
            break
except (OSError, ssl.SSLError):
    result["closed"] = True
    result["closed_after"] = round(time.time() - sent, 2)
if mode == "idle" and result["closed"] and answered:
    result["idle_closed_after"] = round(time.time() - answered, 2)
print(json.dumps(result))
