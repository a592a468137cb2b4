// ptx-text: the PTX front end (lexer, parser, lowering) on arbitrary text.
// A guest sends PTX as a module image; every malformed program must come
// back as a PTXError with its line, never as a trap. With Fuzz/ptx.dict
// (`-dict=`), libFuzzer splices PTX's keywords into its mutations.
import FuzzSupport
import PTX

runFuzzer { data, size in
  let input = FuzzInput(data, size)
  // Bytes that are not UTF-8 are repaired here; the device rejects them
  // before the parser (module-image covers that path).
  let text = String(decoding: input.bytes, as: UTF8.self)
  guard let module = try? PTXModule(source: text) else { return 0 }
  for name in module.kernelNames { _ = try? module.kernel(named: name) }
  return 0
}
