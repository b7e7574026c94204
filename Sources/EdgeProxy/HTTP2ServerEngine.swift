import NIOCore
import NIOHPACK
import NIOHTTP2

/// What the engine tells the streams behind it (`HTTP2Downstream`), by direct calls: a
/// frame passed on through the pipeline was wrapped in `NIOAny` (an allocation for each
/// `HTTP2Frame`, larger than its inline room) and an event in `Any` (another, and a
/// dynamic cast to tell the events apart), several times a request.
protocol HTTP2ServerStreams: AnyObject {
    /// A stream's first HEADERS were accepted (before `received` hands them on).
    func streamCreated(_ id: UInt32)
    /// A frame of a stream's request: its HEADERS (decoded), DATA, trailers.
    func received(_ payload: HTTP2Frame.FramePayload, on id: UInt32)
    /// The client reset a stream (the engine reports it closed next).
    func clientReset(_ id: UInt32)
    /// The stream ended both ways, or was reset by either side.
    func streamClosed(_ id: UInt32)
    /// A WINDOW_UPDATE from the client, for a stream or for the connection (nil).
    func windowOpened(on id: UInt32?)
    /// The client acknowledged a PING the gateway sent (the drain's).
    func pingAcknowledged(_ data: UInt64)
    /// The engine is done with `bytes` of a stream's response DATA (written to the
    /// channel, or refused for a stream that is gone): what still waits here for the
    /// client's windows is known without a promise and a callback for every write.
    func dataDone(_ bytes: Int, on id: UInt32)
    /// The engine's writing of DATA ended for now (a pass over the send queue, a piece
    /// written at once or refused): a stream held back may take more.
    func dataPassEnded()
}

/// The gateway's own HTTP/2 server connection (#32), in place of NIO's `NIOHTTP2Handler`
/// in front of `HTTP2Downstream`: it hands the streams the request frames (HEADERS
/// decoded, DATA as read) and what happens to them (`HTTP2ServerStreams`), and takes the
/// response frames they write (`send`), encoded here and held for the client's windows
/// (`HTTP2SendQueue`). It grants the connection's receive window itself (`connectionWindowBoost`
/// above the default at once, topped up at the end of each read batch). The frames are cut and checked by
/// `HTTP2FrameReader`, their meaning for the connection is `HTTP2ServerConnectionState`'s,
/// and HPACK is NIO's decoder (`NIOHPACK`) and an encoder without a dynamic table
/// (`HPACKResponseEncoder`); this class only performs what those decide.
///
/// Why: NIO's handler sizes its tables of streams, windows and frame buffers ahead (about
/// 9 kB of the 37.7 kB an idle HTTP/2 connection held), and runs a state machine of its
/// own besides the proxy's for every frame.
final class HTTP2ServerEngine: ChannelDuplexHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundIn = HTTP2Frame
    typealias OutboundOut = ByteBuffer

    private var reader: HTTP2FrameReader
    private var state: HTTP2ServerConnectionState
    /// Field blocks wait there encoded (without the first block's size update).
    private var queue = HTTP2SendQueue<ByteBuffer, EventLoopPromise<Void>>()
    private var decoder: HPACKDecoder
    private var encoder = HPACKResponseEncoder()
    /// The bytes of a frame not yet complete, between reads.
    private var input: ByteBuffer?
    /// Control frames and frame headers not yet handed to the channel. Without storage
    /// once handed on (`ByteBuffer()` shares one empty buffer), so an idle connection holds
    /// none: `reserveOut` gives it room before each frame.
    private var out = ByteBuffer()
    /// Where field blocks are encoded before they are cut into frames.
    private var scratch: ByteBuffer
    private var context: ChannelHandlerContext?
    /// A connection error was sent (GOAWAY): nothing more is read or written.
    private var failed = false
    /// The last stream handed on to the streams behind: what a connection error's GOAWAY
    /// names (a stream whose HEADERS failed to decode was never processed).
    private var lastHandedOn: UInt32 = 0
    /// Between a read and the end of its batch: what the engine writes itself (answers to
    /// PING and SETTINGS, DATA a WINDOW_UPDATE let out, resets) is flushed at its end.
    private var reading = false
    private var needsFlush = false
    /// Frames the engine wrote on its own (answers to PING and SETTINGS, resets, window
    /// updates) while the channel was not writable: a client that makes them and reads
    /// nothing would have them pile up (NIO's limit is the same).
    private var writtenWhileBackedUp = 0
    static let maxWrittenWhileBackedUp = 10_000
    /// The queue's last pass let nothing out although parts wait and the connection's
    /// window is open: a WINDOW_UPDATE for the connection alone cannot change that, and is
    /// not worth another pass over every stream (a flood of one-byte updates would make
    /// each 13-byte frame cost one).
    private var queueStalled = false
    /// PING, SETTINGS and PRIORITY frames from the client, acknowledgements included: at
    /// most 200 in 30 s (NIO's limit).
    private var controlFrames = HTTP2RateLimit(limit: 200, window: .seconds(30))
    /// Says why a connection was refused (a connection error), for the listener's log.
    private let refused: (String) -> Void
    /// The streams behind the engine. Set by the pipeline's assembly; cleared when the
    /// handler goes.
    var streams: (any HTTP2ServerStreams)?
    /// The connection's receive window granted above the default 65,535 bytes in the
    /// preface: uploads on several streams share it, and each stream's own 65,535-byte
    /// window (given back only as its proxy reads) bounds what a stream can make the
    /// gateway hold. Topped up to it once `windowThreshold` of it was used.
    private let connectionWindowBoost: Int
    static let windowThreshold = 32 * 1024

    /// Whether parts of a stream's response wait here (for a window, or for the client to
    /// read): for the streams' stall sweep.
    func holdsParts(on id: UInt32) -> Bool {
        self.queue.hasParts(on: id)
    }

    var holdsAnyParts: Bool { !self.queue.isEmpty }

    init(maxConcurrentStreams: Int, maxHeaderListSize: Int, connectionWindowBoost: Int = 1 << 20, refused: @escaping (String) -> Void) {
        self.connectionWindowBoost = connectionWindowBoost
        // At most 5 CONTINUATION frames in a row, as NIO allows.
        self.reader = HTTP2FrameReader(expectsClientPreface: true, maxFieldBlockBytes: max(maxHeaderListSize, 16_384), maxContinuationFrames: 5)
        self.state = HTTP2ServerConnectionState(limits: .init(maxConcurrentStreams: maxConcurrentStreams))
        self.decoder = HPACKDecoder(allocator: ByteBufferAllocator(), maxDynamicTableSize: HPACKDecoder.maxDynamicTableSize, maxHeaderListSize: maxHeaderListSize)
        self.scratch = ByteBuffer()
        self.maxHeaderListSize = maxHeaderListSize
        self.refused = refused
    }

    private let maxHeaderListSize: Int

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        self.reserveOut()
        // The server's connection preface (§3.4): its SETTINGS, before anything else.
        var settings = self.state.settings
        settings.append(HTTP2WireSetting(identifier: HTTP2WireSetting.maxHeaderListSize, value: UInt32(self.maxHeaderListSize)))
        HTTP2FrameWriter.settings(settings, into: &self.out)
        if self.connectionWindowBoost > 0 { self.giveWindow(self.connectionWindowBoost, on: nil) }
        if context.channel.isActive { self.flush(context: context) }
    }

    func channelActive(context: ChannelHandlerContext) {
        self.flush(context: context)
        context.fireChannelActive()
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        self.failed = true
        self.failQueued()
        self.context = nil
        self.streams = nil
    }

    // MARK: reading

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard !self.failed else { return }
        var buffer = self.unwrapInboundIn(data)
        if var pending = self.input {
            self.input = nil
            pending.writeBuffer(&buffer)
            buffer = pending
        }
        self.reading = true
        do {
            while !self.failed, let frame = try self.reader.next(from: &buffer) {
                try self.handle(frame, context: context)
            }
        } catch let error as HTTP2WireError {
            return self.fail(error, context: context)
        } catch {
            // HPACK: the client's field block does not decode (or is over the list's size).
            return self.fail(HTTP2WireError(code: .compressionError, reason: "a field block that does not decode: \(error)"), context: context)
        }
        // What is left is the start of a frame: kept on its own, not with the whole read.
        if buffer.readableBytes > 0 {
            var rest = context.channel.allocator.buffer(capacity: buffer.readableBytes)
            rest.writeBuffer(&buffer)
            self.input = rest
        }
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        self.reading = false
        self.topUpConnectionWindow()
        context.fireChannelReadComplete()
        if self.needsFlush || self.out.readableBytes > 0 { self.flush(context: context) }
    }

    private func handle(_ frame: HTTP2WireFrame, context: ChannelHandlerContext) throws {
        switch frame {
        case .ping(let data, ack: true):
            if self.controlFrames.exceeded(at: .now()) {
                throw HTTP2WireError(code: .enhanceYourCalm, reason: "more than 200 PING, SETTINGS or PRIORITY frames in 30 s")
            }
            // The drain's PING (`HTTP2Downstream`) comes back.
            self.streams?.pingAcknowledged(data)
            return
        case .ping, .settings, .settingsAck, .priority:
            if self.controlFrames.exceeded(at: .now()) {
                throw HTTP2WireError(code: .enhanceYourCalm, reason: "more than 200 PING, SETTINGS or PRIORITY frames in 30 s")
            }
        default:
            break
        }
        // Every DATA frame takes window, those dropped too (on a stream reset, past a
        // GOAWAY, a stream error): the state counts them, and the top-up at the batch's
        // end gives them back (the connection's window ran out for good without).
        let received = try self.state.received(frame)
        switch received {
        case .opened(let id, var block, let endStream):
            let headers = try self.decoder.decodeHeaders(from: &block)
            if let length = Self.contentLength(headers) {
                guard length >= 0, self.state.expectBody(on: id, length: length) else {
                    try self.state.glitch()  // a stream error, counted as the state counts its own
                    return try self.resetStream(id, code: .protocolError, context: context)
                }
            }
            self.lastHandedOn = id
            let ended = self.state.stream(id) == nil  // before the streams behind may end it themselves
            self.streams?.streamCreated(id)
            self.streams?.received(.headers(.init(headers: headers, endStream: endStream)), on: id)
            if ended { self.closed(id) }

        case .trailers(let id, var block):
            let headers = try self.decoder.decodeHeaders(from: &block)
            let ended = self.state.stream(id) == nil
            self.streams?.received(.headers(.init(headers: headers, endStream: true)), on: id)
            if ended { self.closed(id) }

        case .data(let id, let data, let endStream, let flowControlled):
            let padding = flowControlled > data.readableBytes ? flowControlled - data.readableBytes - 1 : nil
            let ended = self.state.stream(id) == nil
            self.streams?.received(.data(.init(data: .byteBuffer(data), endStream: endStream, paddingBytes: padding)), on: id)
            if ended { self.closed(id) }

        case .reset(let id, _):
            self.dropQueued(id)
            self.streams?.clientReset(id)
            self.closed(id)

        case .refuseFieldBlock(var block, let id, let code):
            _ = try self.decoder.decodeHeaders(from: &block)  // HPACK's tables stay in step
            try self.resetStream(id, code: code, context: context)

        case .discardFieldBlock(var block):
            _ = try self.decoder.decodeHeaders(from: &block)

        case .resetStream(let id, let code, _):
            try self.resetStream(id, code: code, context: context)

        case .windowOpened(let id, _):
            // `HTTP2Downstream` counts them: a client taking its responses is not stalled.
            self.streams?.windowOpened(on: id)
            if id != nil || !self.queueStalled { self.sendQueued(context: context) }

        case .acknowledgeSettings:
            try self.wroteOwnFrame(context)
            self.reserveOut()
            HTTP2FrameWriter.settingsAck(into: &self.out)
            // A larger window for new streams may let waiting DATA go.
            self.queueStalled = false
            self.sendQueued(context: context)

        case .pong(let data):
            try self.wroteOwnFrame(context)
            self.reserveOut()
            HTTP2FrameWriter.ping(data, ack: true, into: &self.out)

        case .goingAway, .nothing:
            break
        }
    }

    /// `content-length` as a number (every value the same); -1 when it is not one: digits
    /// only (`Int` would take "+5", which an upstream may read otherwise).
    private static func contentLength(_ headers: HPACKHeaders) -> Int? {
        var length: Int?
        for (name, value, _) in headers where name == "content-length" {
            guard !value.isEmpty, value.utf8.count <= 18, value.utf8.allSatisfy({ $0 >= 0x30 && $0 <= 0x39 }), let parsed = Int(value),
                  length == nil || length == parsed else { return -1 }
            length = parsed
        }
        return length
    }

    /// Counts a frame the engine writes on its own while the channel is not writable.
    private func wroteOwnFrame(_ context: ChannelHandlerContext) throws(HTTP2WireError) {
        guard !context.channel.isWritable else {
            self.writtenWhileBackedUp = 0
            return
        }
        self.writtenWhileBackedUp += 1
        if self.writtenWhileBackedUp > Self.maxWrittenWhileBackedUp {
            throw HTTP2WireError(code: .enhanceYourCalm, reason: "more than \(Self.maxWrittenWhileBackedUp) frames to answer while it reads nothing")
        }
    }

    /// What the client may still send on the connection (for tests).
    var connectionReceiveWindow: Int { self.state.connectionReceiveWindow }

    /// At the end of a read batch, the connection's window goes back up to its size once
    /// a good part of it was used, unless no stream is left to send on (nothing more is
    /// due after the drain's last GOAWAY).
    private func topUpConnectionWindow() {
        let used = 65_535 + self.connectionWindowBoost - self.state.connectionReceiveWindow
        guard !self.failed, used >= Self.windowThreshold, !self.state.streams.isEmpty else { return }
        self.giveWindow(used, on: nil)
    }

    /// A WINDOW_UPDATE into `out`, counted by the state at once (nothing of it can be
    /// counted twice: the state sees DATA and updates in the order they happen).
    private func giveWindow(_ increment: Int, on id: UInt32?) {
        self.state.windowGiven(on: id, increment: increment)
        self.reserveOut()
        HTTP2FrameWriter.windowUpdate(stream: id ?? 0, increment: UInt32(increment), into: &self.out)
    }

    // MARK: writing

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        let frame = self.unwrapOutboundIn(data)
        self.send(frame.payload, on: UInt32(Int32(frame.streamID)), promise: promise)
    }

    /// A frame of a stream's response (HEADERS, DATA, RST_STREAM) or of the connection
    /// (GOAWAY, PING, WINDOW_UPDATE on stream 0), from the streams behind: called directly,
    /// not written through the pipeline (see `HTTP2ServerStreams`).
    func send(_ payload: HTTP2Frame.FramePayload, on id: UInt32, promise: EventLoopPromise<Void>?) {
        guard !self.failed, let context = self.context else {
            promise?.fail(ChannelError.ioOnClosedChannel)
            return
        }
        switch payload {
        case .headers(let headers):
            self.sendFields(on: id, endStream: headers.endStream, promise: promise) { HPACKResponseEncoder.encodeFields(headers.headers, into: &$0) }
        case .data(let data):
            guard case .byteBuffer(let body) = data.data, self.state.takeResponsePart(on: id, endStream: data.endStream) else {
                if case .byteBuffer(let body) = data.data { self.streams?.dataDone(body.readableBytes, on: id) }
                self.streams?.dataPassEnded()
                return promise?.fail(NIOHTTP2Errors.noSuchStream(streamID: HTTP2StreamID(Int32(truncatingIfNeeded: id)))) ?? ()
            }
            // Nothing of the stream waits and the windows take all of it (one frame's
            // worth): written at once, without a turn through the queue (which allocated
            // the stream's place in it for every response).
            if !self.queue.hasParts(on: id), context.channel.isWritable, body.readableBytes <= self.state.sendable(on: id) {
                self.state.sentData(on: id, length: body.readableBytes, endStream: data.endStream)
                self.writeData(body, on: id, endStream: data.endStream, promise: promise, context: context)
                self.streams?.dataPassEnded()
                return
            }
            self.queue.append(.data(body, endStream: data.endStream), on: id, completion: promise)
            self.queueStalled = false
            self.sendQueued(context: context)
        case .rstStream(let code):
            self.dropQueued(id)
            if self.state.stream(id) != nil {
                self.state.sentReset(on: id)
                self.reserveOut()
                HTTP2FrameWriter.resetStream(stream: id, code: HTTP2WireError.Code(rawValue: UInt32(code.networkCode)) ?? .internalError, into: &self.out)
                self.closed(id)
            }
            self.written(promise, context: context)
        case .windowUpdate(let increment):
            if id == 0 || self.state.stream(id) != nil { self.giveWindow(increment, on: id == 0 ? nil : id) }
            self.written(promise, context: context)
        case .goAway(let last, let code, _):
            let lastStream = UInt32(Int32(last))
            self.state.sentGoAway(lastStream: lastStream)
            self.reserveOut()
            HTTP2FrameWriter.goAway(lastStream: lastStream, code: HTTP2WireError.Code(rawValue: UInt32(code.networkCode)) ?? .internalError, into: &self.out)
            self.written(promise, context: context)
        case .ping(let data, let ack):
            self.reserveOut()
            HTTP2FrameWriter.ping(data.integer, ack: ack, into: &self.out)
            self.written(promise, context: context)
        default:
            promise?.succeed()  // SETTINGS, PRIORITY, PUSH_PROMISE, ALTSVC, ORIGIN: a server here sends none
        }
    }

    /// A HEADERS frame of a stream's response (its head, trailers, a 100 Continue), its
    /// fields encoded by `encode` (without the size update): straight into the frame when
    /// it goes now, into a block of its own when it must wait.
    func sendFields(on id: UInt32, endStream: Bool, promise: EventLoopPromise<Void>?, encode: (inout ByteBuffer) -> Void) {
        guard !self.failed, let context = self.context else {
            promise?.fail(ChannelError.ioOnClosedChannel)
            return
        }
        // Nothing after the response's end (NIO refused it too).
        guard self.state.takeResponsePart(on: id, endStream: endStream) else {
            promise?.fail(NIOHTTP2Errors.noSuchStream(streamID: HTTP2StreamID(Int32(truncatingIfNeeded: id))))
            return
        }
        if self.queue.hasParts(on: id) || !context.channel.isWritable {
            // Behind the stream's DATA, or held while the client reads nothing: the
            // stream stays open meanwhile, so the stream limit bounds what is held.
            var block = context.channel.allocator.buffer(capacity: 256)
            encode(&block)
            self.queue.append(.fields(block, endStream: endStream), on: id, completion: promise)
            self.queueStalled = false
        } else {
            _ = self.state.sentHeaders(on: id, endStream: endStream)
            self.scratch.clear()
            self.encoder.beginBlock(into: &self.scratch)
            encode(&self.scratch)
            self.writeFields(on: id, endStream: endStream, promise: promise, context: context)
        }
    }

    /// Room for a frame in `out`: one allocation for the frames of a turn, not one per
    /// growth step from the shared empty buffer.
    private func reserveOut() {
        if self.out.capacity == 0 { self.out.reserveCapacity(256) }
    }

    /// Asked by the streams behind (which flush once a read batch is done), and at the
    /// end of a read batch in which the engine wrote.
    func flush(context: ChannelHandlerContext) {
        self.needsFlush = false
        if self.out.readableBytes > 0 {
            let bytes = self.out
            self.out = ByteBuffer()
            context.write(self.wrapOutboundOut(bytes), promise: nil)
        }
        context.flush()
    }

    /// The client reads again: what was held for it goes.
    func channelWritabilityChanged(context: ChannelHandlerContext) {
        if context.channel.isWritable {
            self.writtenWhileBackedUp = 0
            self.queueStalled = false
            self.sendQueued(context: context)
            if (self.needsFlush || self.out.readableBytes > 0) && !self.reading { self.flush(context: context) }
        }
        context.fireChannelWritabilityChanged()
    }

    /// A control frame is in `out`; its promise is done once `out` goes to the channel.
    private func written(_ promise: EventLoopPromise<Void>?, context: ChannelHandlerContext) {
        guard let promise else { return }
        self.needsFlush = true
        // Swapped first: a promise failed at once may have its callback write here again.
        let bytes = self.out
        self.out = ByteBuffer()
        context.write(self.wrapOutboundOut(bytes), promise: promise)
    }

    /// The block in `scratch` as a HEADERS frame (and CONTINUATION frames if it must).
    private func writeFields(on id: UInt32, endStream: Bool, promise: EventLoopPromise<Void>?, context: ChannelHandlerContext) {
        self.reserveOut()
        HTTP2FrameWriter.headers(stream: id, block: self.scratch, endStream: endStream, maxFrameSize: self.state.peerMaxFrameSize, into: &self.out)
        // A large block's room is not kept for the rest of the connection.
        if self.scratch.capacity > 1_024 { self.scratch = ByteBuffer() }
        self.written(promise, context: context)
        if endStream { self.closedIfGone(id, context: context) }
    }

    /// Writes what the windows let out of the queue, while the client takes it (the
    /// channel is writable): what waits keeps its stream open, and its proxy from reading
    /// more of the upstream, as NIO held DATA back.
    private func sendQueued(context: ChannelHandlerContext) {
        guard !self.queue.isEmpty else { return }
        var wrote = false
        while context.channel.isWritable, let frame = self.queue.next(&self.state) {
            wrote = true
            switch frame {
            case .data(let id, let data, let endStream, let completion):
                self.writeData(data, on: id, endStream: endStream, promise: completion, context: context)
            case .fields(let id, var block, let endStream, let completion):
                self.scratch.clear()
                self.encoder.beginBlock(into: &self.scratch)
                self.scratch.writeBuffer(&block)
                self.writeFields(on: id, endStream: endStream, promise: completion, context: context)
            }
        }
        // Stalled only with the connection's window open: then every waiting stream waits
        // for its own window, which a connection WINDOW_UPDATE cannot open.
        self.queueStalled = !wrote && !self.queue.isEmpty && context.channel.isWritable && self.state.connectionSendWindow > 0
        // After the pass, not within it: a stream told it may write again writes here.
        if wrote { self.streams?.dataPassEnded() }
    }

    /// A DATA frame the windows took (the state has counted it): its header with what
    /// waits in `out`, then the bytes themselves.
    private func writeData(_ data: ByteBuffer, on id: UInt32, endStream: Bool, promise: EventLoopPromise<Void>?, context: ChannelHandlerContext) {
        self.needsFlush = true
        self.reserveOut()
        HTTP2FrameWriter.dataHeader(stream: id, length: data.readableBytes, endStream: endStream, into: &self.out)
        let header = self.out
        self.out = ByteBuffer()
        context.write(self.wrapOutboundOut(header), promise: nil)
        context.write(self.wrapOutboundOut(data), promise: promise)
        self.streams?.dataDone(data.readableBytes, on: id)
        if endStream { self.closedIfGone(id, context: context) }
    }

    // MARK: streams and the connection ending

    private func resetStream(_ id: UInt32, code: HTTP2WireError.Code, context: ChannelHandlerContext) throws(HTTP2WireError) {
        try self.wroteOwnFrame(context)
        self.state.sentReset(on: id)
        self.reserveOut()
        HTTP2FrameWriter.resetStream(stream: id, code: code, into: &self.out)
        self.dropQueued(id)
        self.closed(id)
        if !self.reading { self.flush(context: context) }
    }

    /// A stream that ended both ways is gone from the state: its proxy and the idle
    /// timeout are told.
    private func closedIfGone(_ id: UInt32, context: ChannelHandlerContext) {
        guard self.state.stream(id) == nil else { return }
        self.closed(id)
    }

    private func closed(_ id: UInt32) {
        self.streams?.streamClosed(id)
    }

    private func dropQueued(_ id: UInt32) {
        for promise in self.queue.drop(stream: id) { promise.fail(NIOHTTP2Errors.streamClosed(streamID: HTTP2StreamID(Int32(truncatingIfNeeded: id)), errorCode: .cancel)) }
    }

    private func failQueued() {
        while let id = self.queue.firstStream {
            for promise in self.queue.drop(stream: id) { promise.fail(ChannelError.ioOnClosedChannel) }
        }
    }

    /// A connection error: GOAWAY with its code, then the close; the reason is logged.
    private func fail(_ error: HTTP2WireError, context: ChannelHandlerContext) {
        guard !self.failed else { return }
        self.failed = true
        self.reading = false
        self.refused("\(error.reason) (\(error.code))")
        self.reserveOut()
        HTTP2FrameWriter.goAway(lastStream: self.lastHandedOn, code: error.code, into: &self.out)
        let bytes = self.out
        self.out = ByteBuffer()
        context.write(self.wrapOutboundOut(bytes), promise: nil)
        context.flush()
        context.close(promise: nil)
    }

    func channelInactive(context: ChannelHandlerContext) {
        // Closed: nothing more is taken, and what waited fails once the streams behind
        // know (their callbacks would otherwise write into a closed connection).
        self.failed = true
        context.fireChannelInactive()
        self.failQueued()
    }
}

@available(*, unavailable)
extension HTTP2ServerEngine: Sendable {}
