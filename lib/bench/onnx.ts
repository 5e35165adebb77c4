// The small ONNX graphs `batchnorm bench --compare onnxruntime` runs in onnxruntime-node,
// encoded by hand (a few fields of onnx.proto3), so the comparison needs no ONNX tooling.
// onnxruntime's BatchNormalization op is NCHW-only and inference-only, so the graphs are
// the elementwise/reduction forms that work for any layout.

function varint(n: number): number[] {
  const out: number[] = [];
  let v = BigInt(n);
  do {
    let b = Number(v & 0x7fn);
    v >>= 7n;
    if (v) b |= 0x80;
    out.push(b);
  } while (v);
  return out;
}
const field = (num: number, wire: number): number[] => varint((num << 3) | wire);
const int = (num: number, v: number): number[] => [...field(num, 0), ...varint(v)];
const bytes = (num: number, b: number[]): number[] => [...field(num, 2), ...varint(b.length), ...b];
const str = (num: number, s: string): number[] => bytes(num, [...Buffer.from(s, 'utf8')]);

// AttributeProto: name=1, i=3, ints=8, type=20 (INT=2, INTS=7)
const attrInts = (name: string, values: number[]): number[] => [...str(1, name), ...values.flatMap((v) => int(8, v)), ...int(20, 7)];
const attrInt = (name: string, v: number): number[] => [...str(1, name), ...int(3, v), ...int(20, 2)];

// NodeProto: input=1, output=2, name=3, op_type=4, attribute=5
function node(op: string, inputs: string[], outputs: string[], attrs: number[][] = []): number[] {
  return [
    ...inputs.flatMap((i) => str(1, i)), ...outputs.flatMap((o) => str(2, o)),
    ...str(3, `${op}_${outputs[0]}`), ...str(4, op), ...attrs.flatMap((a) => bytes(5, a)),
  ];
}

// ValueInfoProto{name=1, type=2: TypeProto{tensor_type=1: {elem_type=1 (FLOAT), shape=2: {dim=1: {dim_value=1}}}}}
function valueInfo(name: string, shape: number[]): number[] {
  const dims = shape.flatMap((d) => bytes(1, int(1, d)));
  const tensorType = [...int(1, 1), ...bytes(2, dims)];
  return [...str(1, name), ...bytes(2, bytes(1, tensorType))];
}

function model(nodes: number[][], inputs: [string, number[]][], outputs: [string, number[]][]): Uint8Array {
  const graph = [
    ...nodes.flatMap((n) => bytes(1, n)), ...str(2, 'g'),
    ...inputs.flatMap(([n, s]) => bytes(11, valueInfo(n, s))),
    ...outputs.flatMap(([n, s]) => bytes(12, valueInfo(n, s))),
  ];
  // ir_version=1 (7), graph=7, opset_import=8 {domain=1 "", version=2 (13)}
  return Uint8Array.from([...int(1, 7), ...bytes(7, graph), ...bytes(8, [...str(1, ''), ...int(2, 13)])]);
}

const keptShape = (shape: number[], axes: number[]): number[] => shape.map((d, i) => (axes.includes(i) ? 1 : d));

const momentsNodes = (axes: number[]): number[][] => [
  node('ReduceMean', ['x'], ['mean'], [attrInts('axes', axes), attrInt('keepdims', 1)]),
  node('Sub', ['x', 'mean'], ['d']),
  node('Mul', ['d', 'd'], ['d2']),
  node('ReduceMean', ['d2'], ['variance'], [attrInts('axes', axes), attrInt('keepdims', 1)]),
];

const normalizeNodes = (): number[][] => [
  node('Add', ['variance', 'eps'], ['ve']),
  node('Sqrt', ['ve'], ['sd']),
  node('Sub', ['x', 'mean'], ['xc']),
  node('Div', ['xc', 'sd'], ['y']),
];

/** moments: mean and population variance over `axes`, keepdims. */
export function momentsModel(shape: number[], axes: number[]): Uint8Array {
  const ps = keptShape(shape, axes);
  return model(momentsNodes(axes), [['x', shape]], [['mean', ps], ['variance', ps]]);
}

/** y = (x − mean) / sqrt(variance + eps), parameters in keepdims shapes. */
export function batchNormModel(shape: number[], axes: number[]): Uint8Array {
  const ps = keptShape(shape, axes);
  return model(normalizeNodes(), [['x', shape], ['mean', ps], ['variance', ps], ['eps', [1]]], [['y', shape]]);
}

/** The training forward's work: statistics of x, then y normalized with them. */
export function trainingForwardModel(shape: number[], axes: number[]): Uint8Array {
  const ps = keptShape(shape, axes);
  return model([...momentsNodes(axes), ...normalizeNodes()], [['x', shape], ['eps', [1]]], [['mean', ps], ['variance', ps], ['y', shape]]);
}
