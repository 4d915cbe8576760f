// swift-tools-version: 6.0
// libFuzzer targets for every decoder of network input (see README.md here). Build and run with
// `make fuzz` (or `make fuzz-smoke`) from the package above.
import PackageDescription

let package = Package(
    name: "ipsec-ha-fuzz",
    dependencies: [
        .package(name: "ipsec-ha", path: ".."),
        .package(url: "https://github.com/apple/swift-log", from: "1.6.0"),
    ],
    targets: [
        .executableTarget(
            name: "ikeha-fuzz",
            dependencies: [
                .product(name: "IPsecHACore", package: "ipsec-ha"),
                .product(name: "IPsecHASync", package: "ipsec-ha"),
                .product(name: "IPsecHAGateway", package: "ipsec-ha"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: [.swiftLanguageMode(.v6)]
        )
    ]
)
