// ikeha-xfrm-probe DESTINATION SPI SOURCE [OUTBOUND INBOUND]
//
// Reads an SA's counters from the running kernel through IPsecHAXFRM (GETAE); with OUTBOUND and
// INBOUND, writes them (NEWAE, the way a takeover does: the SA's kind of replay state kept,
// everything below the inbound top counted as seen) and reads them back. Prints one line,
// `RESULT kind=legacy|esn outbound=N inbound=N bitmap_words=N`, or `ERROR ...` and exits 1.
// `ikeha-xfrm-probe batch N` times a takeover of N Child SAs instead (Batch.swift);
// `ikeha-xfrm-probe delete DESTINATION SPI SOURCE` deletes the SA and reports the counters the
// kernel's deletion notice gave (what a planned switchover hands over), with `packets=N`.
// Run inside the kernel VM (scripts/kernel-vm.sh) by the XFRM tests.
import IPsecHAXFRM

#if canImport(Glibc)
import Glibc

func parseIPv4(_ text: String) -> UInt32? {
    let parts = text.split(separator: ".").compactMap { UInt32($0) }
    guard parts.count == 4, parts.allSatisfy({ $0 < 256 }) else { return nil }
    return parts.reduce(0) { $0 << 8 | $1 }
}

func fail(_ message: String) -> Never {
    print("ERROR \(message)")
    exit(1)
}

let arguments = CommandLine.arguments
if arguments.count == 3, arguments[1] == "batch", let count = Int(arguments[2]), count > 0 {
    runBatch(count: count)
    exit(0)
}
let deleting = arguments.count == 5 && arguments[1] == "delete"
let operands = deleting ? Array(arguments.dropFirst(2)) : Array(arguments.dropFirst())
guard operands.count == 3 || (operands.count == 5 && !deleting), let destination = parseIPv4(operands[0]), let source = parseIPv4(operands[2]),
    let spi = operands[1].hasPrefix("0x") ? UInt32(operands[1].dropFirst(2), radix: 16) : UInt32(operands[1])
else { fail("usage: ikeha-xfrm-probe [delete] DESTINATION SPI SOURCE [OUTBOUND INBOUND]") }
let sa = XFRMSAIdentifier(destination: XFRMAddress(ipv4: destination), spi: spi)
let sourceAddress = XFRMAddress(ipv4: source)

func report(_ event: XFRMAsyncEvent) {
    switch event.replay {
    case .legacy(let outbound, let top, let bitmap)?:
        print("RESULT kind=legacy outbound=\(outbound) inbound=\(top) bitmap_words=1 bitmap0=\(bitmap)")
    case .extended(let state)?:
        let outbound = UInt64(state.outboundHigh) << 32 | UInt64(state.outbound)
        let inbound = UInt64(state.inboundHigh) << 32 | UInt64(state.inbound)
        print("RESULT kind=esn outbound=\(outbound) inbound=\(inbound) bitmap_words=\(state.bitmap.count) bitmap0=\(state.bitmap.first ?? 0)")
    case nil:
        fail("no replay state in the kernel's answer")
    }
}

do throws(XFRMCodecError) {
    let socket = try XFRMSocket()
    if deleting {
        let last = try socket.deleteReportingCounters(sa)
        guard last.sa == sa, last.source == sourceAddress else { fail("the notice names another SA: \(last.sa) from \(last.source)") }
        report(last)
        print("packets=\(last.lifetime?.packets ?? 0)")
        exit(0)
    }
    var event = try socket.asyncEvent(of: sa, source: sourceAddress)
    if operands.count == 5 {
        guard let outbound = UInt64(operands[3]), let inbound = UInt64(operands[4]) else { fail("counters must be numbers") }
        switch event.replay {
        case .legacy?:
            event.replay = .legacy(outboundLastSent: UInt32(truncatingIfNeeded: outbound), inboundTop: UInt32(truncatingIfNeeded: inbound), bitmap: .max)
        case .extended(var state)?:
            state.outbound = UInt32(truncatingIfNeeded: outbound)
            state.outboundHigh = UInt32(truncatingIfNeeded: outbound >> 32)
            state.inbound = UInt32(truncatingIfNeeded: inbound)
            state.inboundHigh = UInt32(truncatingIfNeeded: inbound >> 32)
            state.bitmap = state.bitmap.map { _ in .max }
            event.replay = .extended(state)
        case nil:
            fail("no replay state in the kernel's answer")
        }
        event.flags = [.replayValues]
        event.lifetime = nil
        try socket.setAsyncEvent(event)
        event = try socket.asyncEvent(of: sa, source: sourceAddress)
    }
    report(event)
} catch {
    fail("\(error)")
}
#else
print("ERROR Linux only")
#endif
