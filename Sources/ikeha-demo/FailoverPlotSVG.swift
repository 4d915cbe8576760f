import IPsecHASimulation

/// `simulate --plot`: the failover as an SVG picture, one panel per Child SA: sequence numbers
/// each member sent over time, the peer's window top, the checkpoints, the crash, the takeover
/// and the advance it made.
enum FailoverPlotSVG {
    static let colours = ["#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22"]

    static func render(_ plot: FailoverPlot, durationMs: Double) -> String {
        let width = 900.0, panel = 240.0, left = 90.0, right = 20.0, top = 40.0, gap = 50.0
        let height = top + Double(plot.series.count) * (panel + gap)
        var out = [
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"\(Int(width))\" height=\"\(Int(height))\" font-family=\"sans-serif\" font-size=\"11\">",
            "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>",
            "<text x=\"\(left)\" y=\"20\" font-size=\"14\">Outbound sequence numbers across the failover (one panel per Child SA)</text>",
        ]
        for (position, series) in plot.series.enumerated() {
            let y0 = top + Double(position) * (panel + gap)
            let values = series.sent.map(\.number) + series.peerTop.map(\.top) + (series.takeover.map { [$0.replicated, $0.resumeAfter] } ?? [])
            let low = Double(values.min() ?? 0), high = Double(max(values.max() ?? 1, (values.min() ?? 0) + 1))
            func x(_ t: Double) -> Double { left + t / max(durationMs, 1) * (width - left - right) }
            func y(_ value: UInt64) -> Double { y0 + panel - (Double(value) - low) / (high - low) * panel }
            out.append("<rect x=\"\(left)\" y=\"\(y0)\" width=\"\(width - left - right)\" height=\"\(panel)\" fill=\"none\" stroke=\"#ccc\"/>")
            out.append("<text x=\"\(left)\" y=\"\(y0 - 6)\">Child SA, SPI \(series.spi)</text>")
            out.append("<text x=\"4\" y=\"\(y0 + 10)\">\(Int(high))</text><text x=\"4\" y=\"\(y0 + panel)\">\(Int(low))</text>")
            out.append("<text x=\"\(width - right - 60)\" y=\"\(y0 + panel + 14)\">\(Int(durationMs)) ms</text>")
            if !series.peerTop.isEmpty {
                let points = series.peerTop.map { "\(x($0.t)),\(y($0.top))" }.joined(separator: " ")
                out.append("<polyline points=\"\(points)\" fill=\"none\" stroke=\"#999\" stroke-dasharray=\"4 3\"/>")
            }
            for member in Set(series.sent.map(\.member)).sorted() {
                let points = series.sent.filter { $0.member == member }.map { "\(x($0.t)),\(y($0.number))" }.joined(separator: " ")
                let colour = colours[Int(member) % colours.count]
                out.append("<polyline points=\"\(points)\" fill=\"none\" stroke=\"\(colour)\" stroke-width=\"1.5\"/>")
                out.append("<text x=\"\(width - right - 150)\" y=\"\(y0 + 14 + Double(member) * 13)\" fill=\"\(colour)\">sent by member \(member)</text>")
            }
            for checkpoint in series.checkpoints {
                out.append("<circle cx=\"\(x(checkpoint.t))\" cy=\"\(y(checkpoint.lastSent))\" r=\"2\" fill=\"black\"/>")
            }
            if let crash = plot.crash {
                out.append("<line x1=\"\(x(crash))\" y1=\"\(y0)\" x2=\"\(x(crash))\" y2=\"\(y0 + panel)\" stroke=\"red\"/>")
                out.append("<text x=\"\(x(crash) + 3)\" y=\"\(y0 + 12)\" fill=\"red\">crash</text>")
            }
            if let takeover = series.takeover {
                out.append("<line x1=\"\(x(takeover.t))\" y1=\"\(y(takeover.replicated))\" x2=\"\(x(takeover.t))\" y2=\"\(y(takeover.resumeAfter))\" stroke=\"#9467bd\" stroke-width=\"3\"/>")
                out.append("<text x=\"\(x(takeover.t) + 5)\" y=\"\(y(takeover.resumeAfter) + 12)\" fill=\"#9467bd\">takeover: advance \(takeover.resumeAfter - takeover.replicated) over the last checkpoint</text>")
            }
        }
        out.append("<text x=\"\(left)\" y=\"\(height - 8)\" fill=\"#666\">dashed: the peer's replay-window top; dots: counter checkpoints</text>")
        out.append("</svg>")
        return out.joined(separator: "\n")
    }
}
