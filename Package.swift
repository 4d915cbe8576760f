// swift-tools-version:6.2
import PackageDescription

// Warnings are errors in every target of this package (not in its dependencies).
let strictSettings: [SwiftSetting] = [
    .treatAllWarnings(as: .error),
    .enableUpcomingFeature("ExistentialAny"),
    .enableUpcomingFeature("InternalImportsByDefault"),
]

let package = Package(
    name: "ipsec-ha",
    products: [
        .library(name: "IPsecHACore", targets: ["IPsecHACore"]),
        .library(name: "IPsecHASync", targets: ["IPsecHASync"]),
        .library(name: "IPsecHASimulation", targets: ["IPsecHASimulation"]),
        .library(name: "IPsecHATestKit", targets: ["IPsecHATestKit"]),
        .library(name: "IPsecHAXFRM", targets: ["IPsecHAXFRM"]),
        .library(name: "IPsecHAXFRMDataPlane", targets: ["IPsecHAXFRMDataPlane"]),
        .library(name: "IPsecHASyncNIO", targets: ["IPsecHASyncNIO"]),
        .executable(name: "ikeha-demo", targets: ["ikeha-demo"]),
        // libipsecha.so: ClusterMember for daemons written in C (include/ipsecha.h,
        // `make install-c`, Docs/EmbeddingFromC.md).
        .library(name: "ipsecha", type: .dynamic, targets: ["IPsecHACAPI"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/apple/swift-log", from: "1.6.0"),
        .package(url: "https://github.com/apple/swift-metrics", from: "2.5.0"),
        .package(url: "https://github.com/apple/swift-nio", from: "2.101.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus", from: "2.4.1"),
        .package(url: "https://github.com/jpsim/Yams", from: "6.2.2"),
    ],
    targets: [
        // libsodium from the system. SwiftPM finds its flags through pkg-config; the module
        // map's `link "sodium"` keeps the link working where pkg-config cannot see the .pc.
        .systemLibrary(
            name: "CSodium",
            pkgConfig: "libsodium",
            providers: [.apt(["libsodium-dev"])]
        ),
        .target(
            name: "IPsecHACore",
            swiftSettings: strictSettings
        ),
        .target(
            name: "IPsecHASync",
            dependencies: [
                "IPsecHACore", "CSodium",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
            ],
            swiftSettings: strictSettings
        ),
        // The C interface's header, Sources/CIPsecHA/include/ipsecha.h: the one definition of
        // its functions and structures, which IPsecHACAPI implements (`@c @implementation`, so
        // that the compiler holds the two to the same signatures).
        .target(name: "CIPsecHA"),
        .target(
            name: "IPsecHACAPI",
            dependencies: ["IPsecHACore", "IPsecHASync", "CIPsecHA", .product(name: "Logging", package: "swift-log")],
            swiftSettings: strictSettings
        ),
        // The UDP transport, apart so that an embedder with its own transport does not link NIO.
        .target(
            name: "IPsecHASyncNIO",
            dependencies: [
                "IPsecHACore", "IPsecHASync",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
            ],
            swiftSettings: strictSettings
        ),
        // The Linux kernel's XFRM over netlink: messages and their codec (pure Swift, fuzzable),
        // for a data plane that keeps its counters in the kernel.
        .target(
            name: "IPsecHAXFRM",
            swiftSettings: strictSettings
        ),
        // A ClusterMember's data plane in the Linux kernel: counters read from and written to
        // the kernel's SAs through IPsecHAXFRM.
        .target(
            name: "IPsecHAXFRMDataPlane",
            dependencies: ["IPsecHACore", "IPsecHASync", "IPsecHAXFRM"],
            swiftSettings: strictSettings
        ),
        // What tests of an embedder need and production code must not carry: the in-memory
        // network with fault injection, SA fixtures, the transport conformance check, clusters
        // of members on a virtual clock.
        .target(
            name: "IPsecHATestKit",
            dependencies: ["IPsecHACore", "IPsecHASync"],
            swiftSettings: strictSettings
        ),
        .target(
            name: "IPsecHASimulation",
            dependencies: ["IPsecHACore", "IPsecHASync", "IPsecHATestKit", .product(name: "Logging", package: "swift-log")],
            swiftSettings: strictSettings
        ),
        // The reference gateway, an example and no product (the package offers no IKE stack):
        // an IKEv2 responder and a userspace ESP-in-UDP data plane on a ClusterMember, checked
        // against strongSwan and keepalived (scripts/interop.sh, scripts/cluster.sh); the
        // worked example of embedding.
        .target(
            name: "IPsecHAGateway",
            dependencies: [
                "IPsecHACore", "IPsecHASync", .product(name: "Logging", package: "swift-log"), .product(name: "Yams", package: "Yams"),
            ],
            path: "Examples/ReferenceGateway/IPsecHAGateway",
            swiftSettings: strictSettings
        ),
        .executableTarget(
            name: "ikeha-gateway",
            dependencies: [
                "IPsecHACore", "IPsecHASync", "IPsecHASyncNIO", "IPsecHAGateway", "IPsecHAXFRM", "IPsecHAXFRMDataPlane",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "Prometheus", package: "swift-prometheus"),
            ],
            path: "Examples/ReferenceGateway/ikeha-gateway",
            swiftSettings: strictSettings
        ),
        // Reads and writes an SA's counters in the running kernel: what the XFRM tests run in
        // the kernel VM (scripts/kernel-vm.sh), built with the Swift runtime linked in.
        .executableTarget(
            name: "ikeha-xfrm-probe",
            dependencies: ["IPsecHACore", "IPsecHASync", "IPsecHATestKit", "IPsecHAXFRM", "IPsecHAXFRMDataPlane"],
            swiftSettings: strictSettings
        ),
        .executableTarget(
            name: "ikeha-demo",
            dependencies: [
                "IPsecHACore",
                "IPsecHAGateway",
                "IPsecHASync",
                "IPsecHASimulation",
                "IPsecHASyncNIO",
                "IPsecHATestKit",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: strictSettings
        ),
        // Running the package's scripts and executables from the tests (no product).
        .target(name: "IPsecHATestSupport", path: "Tests/Support", swiftSettings: strictSettings),
        .testTarget(
            name: "IPsecHACoreTests",
            dependencies: ["IPsecHACore"],
            swiftSettings: strictSettings
        ),
        .testTarget(
            name: "IPsecHAGatewayTests",
            dependencies: [
                "IPsecHAGateway", "IPsecHACore", "IPsecHATestSupport", "ikeha-gateway", .product(name: "Logging", package: "swift-log"),
                .product(name: "InMemoryLogging", package: "swift-log"),
            ],
            swiftSettings: strictSettings
        ),
        .testTarget(
            name: "IPsecHAXFRMTests",
            dependencies: ["IPsecHAXFRM", "IPsecHAXFRMDataPlane", "IPsecHACore", "IPsecHASync", "IPsecHATestKit", "IPsecHATestSupport"],
            swiftSettings: strictSettings
        ),
        // scripts/c-api.sh (libipsecha from C, under AddressSanitizer and valgrind), and the C
        // embedder's takeover plan against the Swift one's.
        .testTarget(
            name: "IPsecHACAPITests",
            dependencies: ["IPsecHACore", "IPsecHASync", "IPsecHATestSupport"],
            swiftSettings: strictSettings
        ),
        .testTarget(
            name: "IKEHADemoTests",
            dependencies: ["ikeha-demo", "IPsecHACore", "IPsecHATestSupport"],
            swiftSettings: strictSettings
        ),
        .testTarget(
            name: "IPsecHASyncTests",
            dependencies: [
                "IPsecHASync", "IPsecHACore", "IPsecHASimulation", "IPsecHASyncNIO", "IPsecHATestKit", "CSodium",
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "MetricsTestKit", package: "swift-metrics"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "InMemoryLogging", package: "swift-log"),
            ],
            swiftSettings: strictSettings
        ),
    ],
    swiftLanguageModes: [.v6]
)

// The libFuzzer binary of FuzzTesting/, only when scripts/fuzz.sh asks for it: libFuzzer
// provides its main, so an ordinary build could not link it. Inside this package, it reaches
// the reference gateway's parsers, which no product exposes.
if Context.environment["IPSECHA_FUZZ"] == "1" {
    package.targets.append(
        .executableTarget(
            name: "ikeha-fuzz",
            dependencies: ["IPsecHACore", "IPsecHASync", "IPsecHAGateway", "IPsecHAXFRM", .product(name: "Logging", package: "swift-log")],
            path: "FuzzTesting/Sources/ikeha-fuzz",
            swiftSettings: [.swiftLanguageMode(.v6)]
        ))
}
