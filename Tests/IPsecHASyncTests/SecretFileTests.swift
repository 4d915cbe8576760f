import Foundation
import IPsecHASync
import Testing

#if canImport(Glibc)
import Glibc
#endif

@Suite("Secret files: keys and PSKs are read only from files fit to hold them")
struct SecretFileTests {
    /// A file in a fresh directory with `contents` and `mode`; removed with the directory.
    final class Scratch {
        let directory: String
        init() throws {
            directory = FileManager.default.temporaryDirectory.appendingPathComponent("ikeha-secret-\(getpid())-\(UUID())").path
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: false)
        }
        func file(_ name: String, _ contents: [UInt8], mode: mode_t = 0o600) throws -> String {
            let path = directory + "/" + name
            #expect(FileManager.default.createFile(atPath: path, contents: Data(contents)))
            #expect(chmod(path, mode) == 0)
            return path
        }
        deinit { try? FileManager.default.removeItem(atPath: directory) }
    }

    func read(_ path: String, length: ClosedRange<Int> = 16...64, dropTrailingNewline: Bool = false) throws -> [UInt8] {
        try SecretFile.read(path, length: length, dropTrailingNewline: dropTrailingNewline) { Array($0) }
    }

    @Test func aPrivateFileOfTheRightLengthIsRead() throws {
        let scratch = try Scratch()
        let secret = Array("correct horse battery staple".utf8)
        #expect(try read(try scratch.file("psk", secret)) == secret)
        #expect(try read(try scratch.file("lf", secret + [0x0A]), dropTrailingNewline: true) == secret)
        #expect(try read(try scratch.file("crlf", secret + [0x0D, 0x0A]), dropTrailingNewline: true) == secret)
        #expect(try read(try scratch.file("kept", secret + [0x0A])) == secret + [0x0A], "only when asked")
        #expect(throws: Never.self) { try ChannelKey(contentsOfFile: try scratch.file("key", Array(repeating: 7, count: 32))) }
    }

    @Test func emptyShortAndLongSecretsAreRefusedNotCut() throws {
        let scratch = try Scratch()
        for (name, count) in [("empty", 0), ("short", 15), ("long", 65)] {
            let path = try scratch.file(name, Array(repeating: 0x41, count: count))
            #expect(throws: SecretFileError.wrongLength(path, count: count, expected: 16...64)) { try read(path) }
        }
        // A newline alone is an empty key.
        let newline = try scratch.file("newline", [0x0A])
        #expect(throws: SecretFileError.wrongLength(newline, count: 0, expected: 16...64)) { try read(newline, dropTrailingNewline: true) }
        let key = try scratch.file("key33", Array(repeating: 7, count: 33))
        #expect(throws: SecretFileError.wrongLength(key, count: 33, expected: 32...32)) { try ChannelKey(contentsOfFile: key) }
    }

    @Test(arguments: [0o640, 0o604, 0o620, 0o644, 0o666] as [mode_t])
    func filesOthersCanReachAreRefused(mode: mode_t) throws {
        let scratch = try Scratch()
        let path = try scratch.file("psk", Array(repeating: 0x41, count: 20), mode: mode)
        #expect(throws: SecretFileError.accessibleByOthers(path, mode: UInt32(mode))) { try read(path) }
    }

    @Test func symbolicLinksDirectoriesAndMissingFilesAreRefused() throws {
        let scratch = try Scratch()
        let target = try scratch.file("psk", Array(repeating: 0x41, count: 20))
        let link = scratch.directory + "/link"
        try FileManager.default.createSymbolicLink(atPath: link, withDestinationPath: target)
        #expect(throws: SecretFileError.symbolicLink(link)) { try read(link) }
        #expect(throws: SecretFileError.notARegularFile(scratch.directory)) { try read(scratch.directory) }
        let missing = scratch.directory + "/missing"
        #expect(throws: SecretFileError.cannotOpen(missing, errno: ENOENT)) { try read(missing) }
    }

    @Test func aFileOfAnotherUserIsRefused() throws {
        guard geteuid() == 0 else {
            print("skipped: giving a file to another user needs root")
            return
        }
        let scratch = try Scratch()
        let path = try scratch.file("psk", Array(repeating: 0x41, count: 20))
        #expect(chown(path, 65_534, 65_534) == 0)
        #expect(throws: SecretFileError.ownedByAnotherUser(path, owner: 65_534)) { try read(path) }
    }

    @Test func errorsSayWhatToDo() {
        #expect("\(SecretFileError.accessibleByOthers("/k", mode: 0o644))".contains("chmod 600"))
        #expect("\(SecretFileError.wrongLength("/k", count: 0, expected: 32...32))" == "/k holds 0 bytes; it must hold exactly 32")
    }
}
