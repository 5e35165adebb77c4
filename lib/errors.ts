/**
 * Errors of a backend (not of the caller's arguments): the backend is unavailable, a
 * CUDA or cuDNN call failed, memory ran out. `code` is a stable string:
 * ERR_BACKEND_UNAVAILABLE, ERR_OUT_OF_MEMORY, ERR_CUDA, ERR_CUDA_OUT_OF_MEMORY, ERR_CUDNN,
 * ERR_UNSUPPORTED, ERR_NCCL. Argument errors are TypeError / RangeError.
 */
export class BackendError extends Error {
  readonly code: string;

  constructor(message: string, code: string) {
    super(message);
    this.name = 'BackendError';
    this.code = code;
  }
}

/**
 * Gives an error raised asynchronously the stack of the call that started the work (the
 * native stack ends in the event loop, which tells the caller nothing). `site` is an
 * Error created synchronously in the public function.
 */
export function withCallerStack(err: unknown, site: Error): unknown {
  if (err instanceof Error && site.stack) {
    const frames = site.stack.split('\n').slice(1).join('\n');
    err.stack = `${err.name}: ${err.message}\n${frames}`;
  }
  return err;
}

/**
 * Makes an error raised by an inner call name the public function the caller used
 * (`BatchNormalization.forward: ...` rather than the op the layer calls inside). Keeps
 * the class, the code and the stack; only the message's leading name changes.
 */
export function prefixed(fn: string, err: unknown): unknown {
  if (!(err instanceof Error) || err.message.startsWith(`${fn}: `)) return err;
  const m = /^[A-Za-z_][\w.]*: /.exec(err.message);
  const message = `${fn}: ${m ? err.message.slice(m[0].length) : err.message}`;
  if (err.stack?.startsWith(`${err.name}: ${err.message}`)) {
    err.stack = `${err.name}: ${message}${err.stack.slice(err.name.length + 2 + err.message.length)}`;
  }
  err.message = message;
  return err;
}
