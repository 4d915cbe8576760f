import IPsecHACore
import Testing

@Suite("Outbound sequence counter")
struct OutboundSequenceCounterTests {
    @Test func firstPacketCarriesOne() throws {
        var counter = try OutboundSequenceCounter(extendedSequenceNumbers: false)
        #expect(try counter.next() == OutboundSequenceNumber(value: 1, rekeyDue: false))
        #expect(try counter.next().wire == 2)
        #expect(counter.checkpoint == OutboundCounterCheckpoint(lastSent: 2))
    }

    @Test func thirtyTwoBitCounterNeverCycles() throws {
        var counter = try OutboundSequenceCounter(extendedSequenceNumbers: false, lastSent: 0xFFFF_FFFE)
        let last = try counter.next()
        #expect(last.value == 0xFFFF_FFFF)
        #expect(last.rekeyDue)
        #expect(throws: SequenceCounterError.exhausted(lastSent: 0xFFFF_FFFF)) { try counter.next() }
        #expect(counter.lastSent == 0xFFFF_FFFF)
        #expect(counter.remaining == 0)
    }

    @Test func esnCounterCrosses2To32AndStopsAt2To64() throws {
        var counter = try OutboundSequenceCounter(extendedSequenceNumbers: true, lastSent: 0xFFFF_FFFF)
        let next = try counter.next()
        #expect(next.value == 1 << 32)
        #expect(next.wire == 0)
        var end = try OutboundSequenceCounter(extendedSequenceNumbers: true, lastSent: .max - 1)
        #expect(try end.next().value == .max)
        #expect(throws: SequenceCounterError.exhausted(lastSent: .max)) { try end.next() }
    }

    @Test func softLimitSaysWhenToRekey() throws {
        var counter = try OutboundSequenceCounter(extendedSequenceNumbers: false, softLimit: 3)
        #expect(try counter.next().rekeyDue == false)
        #expect(try counter.next().rekeyDue == false)
        #expect(counter.isRekeyDue == false)
        #expect(try counter.next().rekeyDue)
        #expect(counter.isRekeyDue)
        let defaults = try OutboundSequenceCounter(extendedSequenceNumbers: false)
        #expect(defaults.softLimit == 0xFFFF_FFFF - (1 << 24))
    }

    @Test(arguments: [0, 1 << 32] as [UInt64])
    func softLimitOutsideTheSpaceIsRefused(limit: UInt64) {
        #expect(throws: SequenceCounterError.softLimitOutOfRange(limit)) {
            try OutboundSequenceCounter(extendedSequenceNumbers: false, softLimit: limit)
        }
    }

    @Test func startBeyondTheSpaceIsRefused() {
        #expect(throws: SequenceCounterError.beyondSequenceSpace(1 << 32)) {
            try OutboundSequenceCounter(extendedSequenceNumbers: false, lastSent: 1 << 32)
        }
    }

    @Test func advanceForFailover() throws {
        var counter = try OutboundSequenceCounter(extendedSequenceNumbers: false, lastSent: 100)
        try counter.advance(by: 10_000)
        #expect(try counter.next().value == 10_101)
        #expect(throws: SequenceCounterError.advanceBeyondLimit(lastSent: 10_101, advance: 0xFFFF_FFFF)) {
            try counter.advance(by: 0xFFFF_FFFF)
        }
        #expect(counter.lastSent == 10_101, "a refused advance changes nothing")
        var esn = try OutboundSequenceCounter(extendedSequenceNumbers: true, lastSent: 5)
        #expect(throws: SequenceCounterError.advanceBeyondLimit(lastSent: 5, advance: .max)) {
            try esn.advance(by: .max)
        }
        try esn.advance(by: .max - 5)
        #expect(throws: SequenceCounterError.exhausted(lastSent: .max)) { try esn.next() }
    }

    @Test func restoreFromCheckpointNeverReusesANumber() throws {
        var active = try OutboundSequenceCounter(extendedSequenceNumbers: false)
        var used = Set<UInt64>()
        var checkpoint = active.checkpoint
        for packet in 1...2_500 {
            used.insert(try active.next().value)
            if packet % 1_000 == 0 { checkpoint = active.checkpoint }
        }
        var standby = try OutboundSequenceCounter(
            extendedSequenceNumbers: false, restoringFrom: checkpoint, advance: 1_000)
        for _ in 0..<1_000 { #expect(!used.contains(try standby.next().value)) }
        #expect(throws: SequenceCounterError.advanceBeyondLimit(lastSent: 0xFFFF_FF00, advance: 0x100)) {
            try OutboundSequenceCounter(
                extendedSequenceNumbers: false, restoringFrom: OutboundCounterCheckpoint(lastSent: 0xFFFF_FF00),
                advance: 0x100)
        }
    }
}

@Suite("SplitMix64")
struct SplitMix64Tests {
    @Test func matchesTheReferenceOutputs() {
        var generator = SplitMix64(seed: 0)
        #expect(generator.next() == 0xE220_A839_7B1D_CDAF)
        #expect(generator.next() == 0x6E78_9E6A_A1B9_65F4)
    }
}
