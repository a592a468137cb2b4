import Dispatch
import FlyingFox
import FlyingSocks
import Foundation
import Synchronization

/// The HTTP side of `--metrics-listen`: FlyingFox serving `GET /metrics`
/// (Prometheus's text format) from `DeviceMetrics`. It runs on Swift
/// concurrency's threads, which exist only once it starts; an idle endpoint
/// waits in epoll and reads the device only when scraped.
final class MetricsServer: Sendable {
  private let server: HTTPServer
  let address: MetricsAddress

  /// Binds `address` and starts serving; returns once it listens. Throws a
  /// `Failure` that says what was tried and what to do when it cannot bind.
  init(address: MetricsAddress, metrics: DeviceMetrics) throws {
    self.address = address
    let socketAddress: any SocketAddress
    do {
      socketAddress =
        address.family == .ipv6
        ? try sockaddr_in6.inet6(ip6: address.host, port: address.port)
        : try sockaddr_in.inet(ip4: address.host, port: address.port)
    } catch {
      throw Failure("--metrics-listen \(address): not an address this host can bind (\(error))")
    }
    server = HTTPServer(address: socketAddress, timeout: 15, logger: .disabled)
    let server = server
    blocking {
      await server.appendRoute("GET /metrics") { _ in
        HTTPResponse(
          statusCode: .ok, headers: [.contentType: "text/plain; version=0.0.4; charset=utf-8"],
          body: Data(metrics.render()))
      }
      await server.appendRoute("GET /") { _ in
        HTTPResponse(
          statusCode: .ok, headers: [.contentType: "text/plain; charset=utf-8"],
          body: Data("vgpu-mediator: Prometheus metrics at /metrics\n".utf8))
      }
    }
    let failure = Mutex<String?>(nil)
    Task {
      do { try await server.run() } catch { failure.withLock { $0 = "\(error)" } }
    }
    let listening = blocking { () async -> Bool in
      do { try await server.waitUntilListening(timeout: 5) } catch { return false }
      return await server.isListening
    }
    guard listening else {
      // The run task says why (bind, listen); give it a moment to.
      _ = waitUntilTrue(seconds: 1) { failure.withLock { $0 } != nil }
      let reason = failure.withLock { $0 } ?? "it did not start listening within 5 s"
      throw Failure(
        "cannot serve metrics on \(address): \(reason); choose another address with --metrics-listen (\(MetricsAddress.forms)) or stop what listens there"
      )
    }
  }

  /// Where it listens (with the port the kernel chose for port 0).
  var listening: String {
    let server = server
    let fallback = address.description
    return blocking { () async -> String in
      switch await server.listeningAddress {
      case .ip4(let host, let port): "\(host):\(port)"
      case .ip6(let host, let port): "[\(host)]:\(port)"
      default: fallback
      }
    }
  }

  /// Closes the listening socket and open connections, waiting at most a second for them.
  func stop() {
    let server = server
    blocking { await server.stop(timeout: 1) }
  }
}

/// Runs `body` on Swift concurrency's threads and waits for it on this one
/// (the mediator's main thread is no executor: it waits in sigwait).
private func blocking<T: Sendable>(_ body: @escaping @Sendable () async -> T) -> T {
  let result = Mutex<T?>(nil)
  let done = DispatchSemaphore(value: 0)
  Task {
    let value = await body()
    result.withLock { $0 = value }
    done.signal()
  }
  done.wait()
  return result.withLock { $0! }
}

private func waitUntilTrue(seconds: Double, _ condition: () -> Bool) -> Bool {
  let deadline = DispatchTime.now() + seconds
  while DispatchTime.now() < deadline {
    if condition() { return true }
    usleep(10_000)
  }
  return condition()
}
