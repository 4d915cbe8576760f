import ArgumentParser

@main
struct IKEHADemo: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "ikeha-demo",
        abstract: "IPsec HA primitives: demonstrations and reference behaviour.",
        subcommands: [WalkthroughCommand.self, ReplayCommand.self, WireCommand.self, BenchCommand.self],
        defaultSubcommand: WalkthroughCommand.self
    )
}
