import Foundation

/// The report as an SVG: latency CDFs, bandwidth against transfer size, and
/// command rates against their baselines. Plain SVG 1.1, no scripts or fonts
/// beyond sans-serif, so that any viewer (and rsvg-convert) renders it.
enum Plot {
  static let width = 1000.0
  static let palette = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f"]

  static func svg(_ r: Report) -> String {
    var body = ""
    var y = 10.0
    body += text(
      20, y + 22,
      "vgpu-bench — \(r.date), \(r.cpu), \(r.cores) cores, load \(r.loadAverage.map { String(format: "%.1f", $0) }.joined(separator: "→")), \(r.build)\(r.quick ? ", --quick" : "")",
      size: 16, weight: "bold")
    y += 40
    body += latencyPanel(r, top: y)
    y += 340
    body += bandwidthPanel(r, top: y)
    y += 360
    body += ratePanel(r, top: y)
    y += 300
    return """
      <?xml version="1.0" encoding="UTF-8"?>
      <svg xmlns="http://www.w3.org/2000/svg" width="\(Int(width))" height="\(Int(y))" viewBox="0 0 \(Int(width)) \(Int(y))" font-family="sans-serif">
      <rect width="100%" height="100%" fill="white"/>
      \(body)</svg>

      """
  }

  /// Latency against percentile, the tail stretched (y = -log10(1 - q)), time on a log axis.
  static func latencyPanel(_ r: Report, top: Double) -> String {
    let series = r.latency.sorted { $0.key < $1.key }.filter { !$0.value.isEmpty }
    let all = series.flatMap { $0.value }.filter { $0 > 0 }
    let lo = max(10, (all.min() ?? 10) * 0.8)
    let hi = max(lo * 10, (all.max() ?? 1e6) * 1.2)
    let frame = Frame(x: 80, y: top + 30, w: 640, h: 260, xLog: true, xMin: lo, xMax: hi, yLog: false, yMin: 0, yMax: 4)
    var s = frame.axes(
      title: "Round-trip latency distribution (tail stretched)", xLabel: "nanoseconds (log)",
      yLabel: "fraction of round trips ≤ x")
    s += frame.xTicks(decades: true, format: { nsText($0) })
    let ticks: [(Double, String)] = [
      (0, "0"), (0.5, "50%"), (0.9, "90%"), (0.99, "99%"), (0.999, "99.9%"), (0.9999, "99.99%"),
    ]
    s += ticks.map { frame.yTick(-log10(1 - $0.0), $0.1) }.joined()
    for (i, (name, values)) in series.enumerated() {
      let color = palette[i % palette.count]
      let points = zip(r.latencyQuantiles, values).map { (max($1, lo), -log10(1 - $0)) }
      s += frame.polyline(points, color: color, dashed: name.contains("socket"))
      s += legend(x: 740, y: top + 50 + Double(i) * 20, name, color, dashed: name.contains("socket"))
    }
    return s
  }

  /// GB/s against bytes per copy, both axes log.
  static func bandwidthPanel(_ r: Report, top: Double) -> String {
    let series = r.bandwidth.sorted { $0.key < $1.key }
    let sizes = series.flatMap { $0.value.map { Double($0.bytes) } }
    let values = series.flatMap { $0.value.compactMap { $0.gbPerSecond } }.filter { $0 > 0 }
    let frame = Frame(
      x: 80, y: top + 30, w: 640, h: 280, xLog: true, xMin: (sizes.min() ?? 4096) / 1.5,
      xMax: (sizes.max() ?? 1_073_741_824) * 1.5,
      yLog: true, yMin: max(0.001, (values.min() ?? 0.01) / 1.5), yMax: (values.max() ?? 10) * 1.5)
    var s = frame.axes(title: "Bandwidth against transfer size", xLabel: "bytes per copy (log)", yLabel: "GB/s (log)")
    var tick = 4096.0
    while tick <= frame.xMax {
      s += frame.xTick(tick, sizeText(Int(tick)))
      tick *= 16
    }
    let steps = decadeValues(frame.yMin / 10, frame.yMax).flatMap { [$0, 2 * $0, 5 * $0] }
    s += steps.filter { $0 >= frame.yMin && $0 <= frame.yMax }.map { frame.yTick($0, String(format: "%g", $0)) }
      .joined()
    for (i, (name, points)) in series.enumerated() {
      let color = palette[i % palette.count]
      let p = points.compactMap { pt in pt.gbPerSecond.map { (Double(pt.bytes), max($0, frame.yMin)) } }
      s += frame.polyline(p, color: color, dashed: name.contains("socket"), dots: true)
      s += legend(x: 740, y: top + 50 + Double(i) * 20, name, color, dashed: name.contains("socket"))
    }
    return s
  }

  /// Horizontal bars, log scale: each rate beside its baselines.
  static func ratePanel(_ r: Report, top: Double) -> String {
    let rows = r.figures.filter { $0.unit == "ops/s" && $0.value != nil }
    var bars: [(String, Double, Int)] = []
    for (k, f) in rows.enumerated() {
      bars.append((f.name, f.value!, 0))
      for c in f.comparisons { if let v = c.value { bars.append(("  " + c.baseline, v, 1 + k % 2)) } }
    }
    let values = bars.map { $0.1 }.filter { $0 > 0 }
    let h = max(60, Double(bars.count) * 14)
    let frame = Frame(
      x: 380, y: top + 30, w: 560, h: h, xLog: true, xMin: (values.min() ?? 1) / 2, xMax: (values.max() ?? 1e6) * 2,
      yLog: false, yMin: 0, yMax: Double(bars.count))
    var s = text(
      20, top + 20, "Command rates (operations per second, log) — measured, then its baselines", size: 14,
      weight: "bold")
    s += frame.xTicks(decades: true, format: { rateText($0) })
    for (i, (name, v, kind)) in bars.enumerated() {
      let yy = frame.y + Double(i) * 14
      let x1 = frame.px(max(v, frame.xMin))
      let color = kind == 0 ? palette[0] : "#aaaaaa"
      s +=
        "<rect x=\"\(f(frame.x))\" y=\"\(f(yy + 2))\" width=\"\(f(x1 - frame.x))\" height=\"10\" fill=\"\(color)\"/>\n"
      s += text(frame.x - 6, yy + 11, "\(name) \(rateText(v))", size: 10, anchor: "end")
    }
    return s
  }

  static func legend(x: Double, y: Double, _ name: String, _ color: String, dashed: Bool) -> String {
    "<line x1=\"\(f(x))\" y1=\"\(f(y - 4))\" x2=\"\(f(x + 24))\" y2=\"\(f(y - 4))\" stroke=\"\(color)\" stroke-width=\"2\"\(dashed ? " stroke-dasharray=\"5,3\"" : "")/>\n"
      + text(x + 30, y, name, size: 11)
  }

  static func text(
    _ x: Double, _ y: Double, _ s: String, size: Int, weight: String = "normal", anchor: String = "start"
  )
    -> String
  {
    let escaped = s.replacingOccurrences(of: "&", with: "&amp;").replacingOccurrences(of: "<", with: "&lt;")
      .replacingOccurrences(of: ">", with: "&gt;")
    return
      "<text x=\"\(f(x))\" y=\"\(f(y))\" font-size=\"\(size)\" font-weight=\"\(weight)\" text-anchor=\"\(anchor)\">\(escaped)</text>\n"
  }

  static func nsText(_ v: Double) -> String {
    v >= 1e6
      ? String(format: "%g ms", v / 1e6) : v >= 1e3 ? String(format: "%g µs", v / 1e3) : String(format: "%g ns", v)
  }
  static func rateText(_ v: Double) -> String {
    v >= 1e6
      ? String(format: "%.3g M/s", v / 1e6)
      : v >= 1e3 ? String(format: "%.3g k/s", v / 1e3) : String(format: "%.3g/s", v)
  }
  static func decadeValues(_ lo: Double, _ hi: Double) -> [Double] {
    var v = pow(10, floor(log10(lo)))
    var out: [Double] = []
    while v <= hi {
      if v >= lo { out.append(v) }
      v *= 10
    }
    return out
  }
}

func f(_ v: Double) -> String { String(format: "%.1f", v) }

/// A plotting area with linear or log axes.
struct Frame {
  var x, y, w, h: Double
  var xLog: Bool
  var xMin, xMax: Double
  var yLog: Bool
  var yMin, yMax: Double

  func px(_ v: Double) -> Double {
    let t = xLog ? (log10(v) - log10(xMin)) / (log10(xMax) - log10(xMin)) : (v - xMin) / (xMax - xMin)
    return x + max(0, min(1, t)) * w
  }
  func py(_ v: Double) -> Double {
    let t = yLog ? (log10(v) - log10(yMin)) / (log10(yMax) - log10(yMin)) : (v - yMin) / (yMax - yMin)
    return y + h - max(0, min(1, t)) * h
  }

  func axes(title: String, xLabel: String, yLabel: String) -> String {
    "<rect x=\"\(f(x))\" y=\"\(f(y))\" width=\"\(f(w))\" height=\"\(f(h))\" fill=\"none\" stroke=\"#333\"/>\n"
      + Plot.text(20, y - 12, title, size: 14, weight: "bold")
      + Plot.text(x + w / 2, y + h + 36, xLabel, size: 11, anchor: "middle")
      + "<text x=\"16\" y=\"\(f(y + h / 2))\" font-size=\"11\" text-anchor=\"middle\" transform=\"rotate(-90 16 \(f(y + h / 2)))\">\(yLabel)</text>\n"
  }

  func xTick(_ v: Double, _ label: String) -> String {
    let p = px(v)
    return "<line x1=\"\(f(p))\" y1=\"\(f(y))\" x2=\"\(f(p))\" y2=\"\(f(y + h))\" stroke=\"#ddd\"/>\n"
      + Plot.text(p, y + h + 16, label, size: 10, anchor: "middle")
  }

  func xTicks(decades: Bool, format: (Double) -> String) -> String {
    Plot.decadeValues(xMin, xMax).map { xTick($0, format($0)) }.joined()
  }

  func yTick(_ v: Double, _ label: String) -> String {
    let p = py(v)
    return "<line x1=\"\(f(x))\" y1=\"\(f(p))\" x2=\"\(f(x + w))\" y2=\"\(f(p))\" stroke=\"#ddd\"/>\n"
      + Plot.text(x - 6, p + 4, label, size: 10, anchor: "end")
  }

  func yTicks(_ values: [Double], format: (Double) -> String) -> String {
    values.map { v in
      let p = py(v)
      return "<line x1=\"\(f(x))\" y1=\"\(f(p))\" x2=\"\(f(x + w))\" y2=\"\(f(p))\" stroke=\"#ddd\"/>\n"
        + Plot.text(x - 6, p + 4, format(v), size: 10, anchor: "end")
    }.joined()
  }

  func polyline(_ points: [(Double, Double)], color: String, dashed: Bool, dots: Bool = false) -> String {
    guard !points.isEmpty else { return "" }
    let list = points.map { "\(f(px($0.0))),\(f(py($0.1)))" }.joined(separator: " ")
    var s =
      "<polyline points=\"\(list)\" fill=\"none\" stroke=\"\(color)\" stroke-width=\"2\"\(dashed ? " stroke-dasharray=\"5,3\"" : "")/>\n"
    if dots {
      for p in points { s += "<circle cx=\"\(f(px(p.0)))\" cy=\"\(f(py(p.1)))\" r=\"2.5\" fill=\"\(color)\"/>\n" }
    }
    return s
  }
}
