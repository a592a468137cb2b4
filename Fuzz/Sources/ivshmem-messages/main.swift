// ivshmem-messages: the ivshmem server's side of QEMU's client-server
// protocol (ivshmem-spec.txt). The server reads no bytes from its clients
// (QEMU never writes; a readable socket means the client left), so what a
// hostile client controls is when it comes and goes. The input is such a
// sequence (connect, or disconnect peer k) over the server's own peer-id
// allocation and set-up messages; the messages each guest gets are decoded
// as QEMU decodes them and checked against the spec: version 0, its id, the
// shared memory, then one (id, eventfd) per vector of every peer, its own last.
// The server admits at most IvshmemServer.maxPeers guests, so an input past a
// few dozen bytes only repeats states a shorter one reaches (-max_len=128 in
// tools/fuzz).
import FuzzSupport

@testable import DeviceAccess

struct Peer {
  var id: UInt16
  var eventFDs: [Int32]
}

runFuzzer { data, size in
  var input = FuzzInput(data, size)
  let vectors = Int(input.byte() % 4) + 1
  var peers: [Peer] = []
  var nextFD: Int32 = 100
  while !input.isEmpty {
    let op = input.byte()
    if op & 1 == 0 || peers.isEmpty {
      // Many connects in a row: let a few ids be taken at once to reach the end of the id space.
      if op & 0x80 != 0 && peers.count < 4 {
        let jump = input.integer(UInt16.self)
        if jump != 0 && !peers.contains(where: { $0.id == jump }) { peers.append(Peer(id: jump, eventFDs: [])) }
      }
      guard let id = IvshmemServer.freePeerID(taken: peers.map(\.id)) else {
        invariant(peers.count >= IvshmemServer.maxPeers, "no free peer id with \(peers.count) peers connected")
        continue
      }
      invariant(peers.count < IvshmemServer.maxPeers, "a peer id given with \(peers.count) peers connected")
      invariant(id != 0 && !peers.contains(where: { $0.id == id }), "peer id \(id) given twice (or the device's 0)")
      let own = (0..<vectors).map { nextFD + Int32($0) }
      nextFD += Int32(vectors)
      let messages = IvshmemServer.setupMessages(
        id: id, sharedMemoryFD: 3, hostEventFD: 4, others: peers.map { ($0.id, $0.eventFDs) }, own: own)
      check(messages, id: id, peers: peers, own: own)
      peers.append(Peer(id: id, eventFDs: own))
    } else {
      peers.remove(at: Int(op >> 1) % peers.count)
    }
  }
  return 0
}

/// Decodes the set-up messages as QEMU's ivshmem-doorbell does and checks them.
func check(_ messages: [(value: Int64, fd: Int32)], id: UInt16, peers: [Peer], own: [Int32]) {
  invariant(messages.count >= 4, "\(messages.count) set-up messages, fewer than version, id, memory, device")
  invariant(messages[0] == (0, -1), "the first message is \(messages[0]), not version 0")
  invariant(messages[1] == (Int64(id), -1), "the second message is \(messages[1]), not the id \(id)")
  invariant(messages[2] == (-1, 3), "the third message is \(messages[2]), not -1 with the shared memory")
  invariant(messages[3] == (0, 4), "the fourth message is \(messages[3]), not the device's eventfd")
  // Compared in place: copying both lists per connect cost about 15% of an
  // input's time.
  var next = 4
  func expect(_ peer: UInt16, _ fd: Int32) {
    invariant(
      next < messages.count && messages[next] == (Int64(peer), fd),
      "the peers' eventfds were not each sent once, its own last (message \(next) of \(messages.count))")
    next += 1
  }
  for p in peers { for fd in p.eventFDs { expect(p.id, fd) } }
  for fd in own { expect(id, fd) }
  invariant(next == messages.count, "\(messages.count - next) set-up messages more than the peers' eventfds")
  // QEMU reads every id as a peer number below its peer limit; the device is peer 0, guests 1...65535.
  for m in messages[4...] {
    invariant(m.value >= 0 && m.value <= Int64(UInt16.max), "peer id \(m.value) out of range")
  }
}
