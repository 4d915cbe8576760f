import ArgumentParser

@main
struct IKEHADemo: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "ikeha-demo",
        abstract: "IPsec HA primitives: demonstrations and reference behaviour.",
        subcommands: [SimulateCommand.self, TortureCommand.self, WalkthroughCommand.self, MemberCommand.self, ReplayCommand.self, WireCommand.self, BenchCommand.self],
        defaultSubcommand: SimulateCommand.self
    )
}
