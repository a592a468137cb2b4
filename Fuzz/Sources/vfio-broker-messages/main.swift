// vfio-broker-messages: the grant a process receives from the VFIO broker
// (another process, maybe not ours) before it maps anything: any bytes, any
// length, for any BAR asked. Either a grant that passes every check comes
// back, or an AccessError that says what was found.
import FuzzSupport

@testable import DeviceAccess

runFuzzer { data, size in
  var input = FuzzInput(data, size)
  let bar = Int(input.byte() % 7)
  let message = input.rest()
  do throws(AccessError) {
    let grant = try VFIOBroker.Grant(decoding: message, bar: bar, attempted: "fuzz")
    invariant(grant.bar == UInt32(bar), "a grant for BAR \(grant.bar) was taken for BAR \(bar)")
    invariant(grant.size > 0 && grant.size <= 1 << 40, "a grant of \(grant.size) bytes passed the checks")
    invariant(grant.vectors <= 2048, "a grant with \(grant.vectors) vectors passed the checks")
  } catch {
    invariant(!error.description.isEmpty, "an error without a description")
  }
  return 0
}
