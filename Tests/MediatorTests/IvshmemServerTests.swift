import CSupport
import Foundation
import Synchronization
import TestSupport
import Testing
import VGPUDevice
import VGPUProtocol

@testable import DeviceAccess

/// The mediator as QEMU's ivshmem server (QEMU docs/specs/ivshmem-spec.txt).
/// The whole path — guest doorbell, MSI-X through VFIO — is proven in the VM
/// test (tools/vm/e2e); these check the server's side on this host.
@Suite struct IvshmemServerTests {
  /// One message from the server: an int64 and the fd that came with it (-1: none).
  static func receive(_ socket: Int32) -> (value: Int64, fd: Int32)? {
    var value: Int64 = 0
    var fd: Int32 = -1
    var count: Int32 = 0
    let rc = withUnsafeMutableBytes(of: &value) { vgpu_recv_fds(socket, $0.baseAddress, 8, &fd, 1, &count) }
    guard rc == 0 else { return nil }
    return (Int64(littleEndian: value), count == 1 ? fd : -1)
  }

  static func readable(_ fd: Int32) -> Bool { vgpu_eventfd_wait(fd, 0) == 1 }

  @Test func aGuestGetsTheSpecsMessagesAndWakeUpsGoBothWays() throws {
    let path = "/dev/shm/vgpu-ivshmem-test-\(getpid())"
    let socketPath = NSTemporaryDirectory() + "vgpu-ivshmem-\(getpid()).sock"
    defer { unlink(path) }
    let region = try MappedRegion.sharedFile(path, create: 16 << 20, exclusive: true)
    var config = ReferenceDeviceConfiguration()
    config.memorySize = 64 << 20
    config.ownersAreLocalProcesses = false
    let device = try ReferenceDevice(configuration: config, region: region)
    let server = try IvshmemServer(socketPath: socketPath, sharedMemoryFD: region.fileDescriptor, vectors: 4)
    device.useDoorbells(server)
    server.start()
    device.start()
    defer {
      device.stop()
      server.stop()
    }
    let features = FeatureBits(rawValue: RegisterBlock(region.base).load(Register.features))
    // Everything but host memory lent by processes: a VM's pids mean nothing here.
    #expect(
      features.contains(.ivshmemDoorbell) && features.isSuperset(of: FeatureBits.all.subtracting([.sharedHostMemory, .hostWindow])))
    #expect(!features.contains(.sharedHostMemory))
    // Guests wait on interrupts only for the pairs that have a vector of their own.
    #expect(RegisterBlock(region.base).load(Register.ivshmemVectors) == 4)

    // The order of ivshmem-spec.txt: version 0; the guest's id; -1 with the
    // shared memory; peer 0 (the device) with its eventfd; the guest's own
    // id once per vector, each with an eventfd.
    let guest = vgpu_path_connect(socketPath)
    try #require(guest >= 0)
    defer { close(guest) }
    let version = try #require(Self.receive(guest))
    let id = try #require(Self.receive(guest))
    let memory = try #require(Self.receive(guest))
    let devicePeer = try #require(Self.receive(guest))
    #expect(version.value == 0 && version.fd == -1)
    #expect(id.value == 1 && id.fd == -1)
    #expect(memory.value == -1 && memory.fd >= 0)
    #expect(devicePeer.value == 0 && devicePeer.fd >= 0)
    var vectors: [Int32] = []
    for _ in 0..<4 {
      let m = try #require(Self.receive(guest))
      #expect(m.value == 1 && m.fd >= 0)
      vectors.append(m.fd)
    }
    #expect(waitUntil(seconds: 2) { server.connectedPeers == [1] })

    // The fd is the BAR: what the device wrote there reads back through it.
    let mapped = mmap(nil, 4096, PROT_READ, MAP_SHARED, memory.fd, 0)
    try #require(mapped != MAP_FAILED)
    #expect(RegisterBlock(mapped!).load(Register.magic) == vgpuMagic)
    munmap(mapped, 4096)

    // Guest → device: once the device sleeps, a doorbell (QEMU writes the
    // device.s eventfd) wakes it (a timeout is not counted as a doorbell).
    let registers = RegisterBlock(region.base)
    #expect(waitUntil(seconds: 2) { registers.deviceSleeping })
    let before = server.doorbellsReceived
    #expect(vgpu_eventfd_signal(devicePeer.fd) == 0)
    #expect(waitUntil(seconds: 1) { server.doorbellsReceived == before + 1 })

    // Device → guest: queue pair 6 raises vector 6 % 4 = 2, and only it.
    server.signalGuests(vector: 6)
    #expect(Self.readable(vectors[2]))
    #expect(![0, 1, 3].contains { Self.readable(vectors[$0]) })
    #expect(server.interruptsSent == 1)

    // A second guest learns of the first (guest-to-guest doorbells), and the
    // first of the second.
    let second = vgpu_path_connect(socketPath)
    try #require(second >= 0)
    var messages: [(Int64, Bool)] = []
    for _ in 0..<(4 + 4 + 4) {
      let m = try #require(Self.receive(second))
      messages.append((m.value, m.fd >= 0))
      if m.fd >= 0 { close(m.fd) }
    }
    #expect(messages.map(\.0) == [0, 2, -1, 0] + [1, 1, 1, 1] + [2, 2, 2, 2])
    for _ in 0..<4 {
      let m = try #require(Self.receive(guest))
      #expect(m.value == 2 && m.fd >= 0)
      close(m.fd)
    }
    // It leaves (a VM powered off): the first is told, with an id and no fd.
    close(second)
    let gone = try #require(Self.receive(guest))
    #expect(gone.value == 2 && gone.fd == -1)
    #expect(waitUntil(seconds: 2) { server.connectedPeers == [1] })
    (vectors + [memory.fd, devicePeer.fd]).forEach { close($0) }
  }

  /// The lowest id not taken, whatever the order and repeats of those that
  /// are (0 is the device's); none once all 65,535 are taken.
  @Test func aNewGuestGetsTheLowestFreePeerID() {
    #expect(IvshmemServer.freePeerID(taken: []) == 1)
    #expect(IvshmemServer.freePeerID(taken: [3, 1, 1, 2, 5]) == 4)
    #expect(IvshmemServer.freePeerID(taken: [0, 2, UInt16.max]) == 1)
    #expect(IvshmemServer.freePeerID(taken: [UInt16](1...UInt16.max - 1).reversed(), limit: .max) == UInt16.max)
    #expect(IvshmemServer.freePeerID(taken: [UInt16](0...UInt16.max), limit: .max) == nil)
    // At the server's limit, none.
    #expect(IvshmemServer.freePeerID(taken: [UInt16](1...15)) == 16)
    #expect(IvshmemServer.freePeerID(taken: [UInt16](1...16)) == nil)
  }

  /// What a server logged.
  final class Lines: Sendable {
    private let lines = Mutex<[String]>([])
    func append(_ line: String) { lines.withLock { $0.append(line) } }
    func contain(_ text: String) -> Bool { lines.withLock { $0.contains { $0.contains(text) } } }
  }

  /// A started server and what it logs.
  static func server(_ name: String, vectors: Int) throws -> (IvshmemServer, Lines, String) {
    let socketPath = NSTemporaryDirectory() + "vgpu-ivshmem-\(name)-\(getpid()).sock"
    let lines = Lines()
    let server = try IvshmemServer(socketPath: socketPath, sharedMemoryFD: -1, vectors: vectors) { lines.append($0) }
    server.start()
    return (server, lines, socketPath)
  }

  /// A connection whose reads give up after `seconds` (a server that never
  /// answers fails the test instead of hanging it).
  static func connect(_ path: String, seconds: Int = 10) throws -> Int32 {
    let s = vgpu_path_connect(path)
    try #require(s >= 0)
    var timeout = timeval(tv_sec: seconds, tv_usec: 0)
    _ = setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
    return s
  }

  /// One BAR is one VM's: a 17th guest is refused (its connection closed at
  /// once, with a line saying why), and admitted again once one has left.
  @Test func theServerAdmitsAtMostItsLimitOfGuests() throws {
    let (server, lines, path) = try Self.server("limit", vectors: 1)
    defer { server.stop() }
    var guests: [Int32] = []
    defer { guests.forEach { close($0) } }
    for _ in 0..<IvshmemServer.maxPeers { guests.append(try Self.connect(path)) }
    #expect(waitUntil(seconds: 5) { server.connectedPeers.count == IvshmemServer.maxPeers })
    let refused = try Self.connect(path)
    #expect(Self.receive(refused) == nil, "the 17th guest got a message")
    close(refused)
    #expect(waitUntil(seconds: 2) { lines.contain("16 guests are connected") })
    #expect(server.connectedPeers.count == IvshmemServer.maxPeers)
    // Peer 3 leaves; the next guest is admitted and takes its id.
    close(guests.remove(at: 2))
    #expect(waitUntil(seconds: 2) { server.connectedPeers.count == IvshmemServer.maxPeers - 1 })
    let next = try Self.connect(path)
    guests.append(next)
    #expect(Self.receive(next).map(\.value) == 0)
    #expect(Self.receive(next).map(\.value) == 3)
  }

  /// A guest that never reads its socket (a hostile local process) is
  /// dropped once a message to it waits past the send timeout; the server
  /// thread goes on serving the others' connects.
  @Test func aGuestThatDoesNotReadIsDroppedAndOthersAreStillServed() throws {
    let (server, lines, path) = try Self.server("unread", vectors: 64)
    defer { server.stop() }
    let silent = try Self.connect(path)
    defer { close(silent) }
    #expect(waitUntil(seconds: 2) { server.connectedPeers == [1] })
    // Each guest that comes and goes sends the silent one 64 eventfds and a
    // departure: its socket fills within tens to a few hundred rounds (19 to
    // 111 seen; the kernel's accounting of queued descriptors varies).
    var rounds = 0
    let started = Date()
    while server.connectedPeers.contains(1) && rounds < 5000 && Date().timeIntervalSince(started) < 60 {
      let churn = try Self.connect(path)
      _ = Self.receive(churn)
      close(churn)
      rounds += 1
      usleep(2_000)
    }
    #expect(waitUntil(seconds: 10) { !server.connectedPeers.contains(1) }, "after \(rounds) rounds")
    #expect(lines.contain("took no message within 2 s"))
    // A new guest gets its whole set-up: version, id, memory, device, 64 of its own.
    let next = try Self.connect(path)
    defer { close(next) }
    var received = 0
    while let m = Self.receive(next) {
      if m.fd >= 0 { close(m.fd) }
      received += 1
      if received == 4 + 64 { break }
    }
    #expect(received == 4 + 64)
    print("the silent guest was dropped after \(rounds) guests came and went")
  }

  @Test func aSecondServerOnALiveSocketIsRefusedAndAStaleOneReplaced() throws {
    let socketPath = NSTemporaryDirectory() + "vgpu-ivshmem-refuse-\(getpid()).sock"
    let first = try IvshmemServer(socketPath: socketPath, sharedMemoryFD: -1, vectors: 1)
    first.start()
    do {
      _ = try IvshmemServer(socketPath: socketPath, sharedMemoryFD: -1, vectors: 1)
      Issue.record("a second server took a socket a live one listens on")
    } catch {
      #expect(error.kind == .busy && error.description.contains("another server listens there"), "\(error)")
    }
    first.stop()
    // A socket file whose server died (nobody accepts on it) is taken over.
    let stale = vgpu_path_listen(socketPath)
    try #require(stale >= 0)
    close(stale)
    #expect(FileManager.default.fileExists(atPath: socketPath))
    let next = try IvshmemServer(socketPath: socketPath, sharedMemoryFD: -1, vectors: 1)
    next.start()
    next.stop()
    #expect(!FileManager.default.fileExists(atPath: socketPath))
  }

  /// Real QEMU (no guest: -S keeps its CPU stopped) connects, takes the
  /// shared memory and eventfds without complaint, and is noticed leaving.
  @Test(.enabled(if: FileManager.default.isExecutableFile(atPath: "/usr/bin/qemu-system-x86_64")))
  func qemuAcceptsTheMediatorAsItsServer() throws {
    let socketPath = NSTemporaryDirectory() + "vgpu-qemu-\(getpid()).sock"
    let mediator = try MediatorProcess(arguments: ["--ivshmem-socket", socketPath, "--vectors", "4"])
    let qemu = Process()
    qemu.executableURL = URL(fileURLWithPath: "/usr/bin/qemu-system-x86_64")
    qemu.arguments = [
      "-accel", "tcg", "-machine", "q35", "-S", "-display", "none", "-monitor", "none", "-serial", "none",
      "-chardev", "socket,path=\(socketPath),id=vgpu", "-device", "ivshmem-doorbell,chardev=vgpu,vectors=4,addr=05.0",
    ]
    let qemuErrors = Pipe()
    qemu.standardError = qemuErrors
    qemu.standardOutput = FileHandle.nullDevice
    try qemu.run()
    sleep(2)
    let stillRunning = qemu.isRunning
    // SIGKILL: the test runner's children inherit a blocked SIGTERM.
    kill(qemu.processIdentifier, SIGKILL)
    qemu.waitUntilExit()
    usleep(300_000)
    let log = mediator.stop()
    let complaints = String(decoding: qemuErrors.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
      .split(separator: "\n")
    #expect(stillRunning, "QEMU exited: \(complaints)")
    #expect(complaints.isEmpty, "QEMU said: \(complaints)")
    #expect(log.contains("guest connected as peer 1 (4 vectors)"), "\(log)")
    #expect(log.contains("guest peer 1 disconnected"), "\(log)")
    #expect(log.contains("-device ivshmem-doorbell,chardev=vgpu,vectors=4,addr=05.0"), "\(log)")
  }
}
