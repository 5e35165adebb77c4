// Progress of `batchnorm bench` on stderr with Node's own TTY facilities: one line,
// rewritten in place, saying which case runs, how many are left and an ETA. Silent unless
// stderr is a terminal, so logs, pipes, CI and `--json -` get only the results.
import * as readline from 'node:readline';

export interface Progress {
  /** A case starts; `label` names it. */
  tick(label: string): void;
  /** The run is over: clears the line. */
  done(): void;
}

export function progressEnabled(stdoutTaken: boolean): boolean {
  return Boolean(process.stderr.isTTY) && !stdoutTaken && !process.env.CI;
}

export function createProgress(total: number, enabled: boolean): Progress {
  if (!enabled) return { tick() {}, done() {} };
  const stream = process.stderr;
  const start = Date.now();
  let n = 0;
  const fmt = (ms: number) => (ms < 60e3 ? `${Math.round(ms / 1e3)} s` : `${Math.floor(ms / 60e3)} min ${Math.round((ms % 60e3) / 1e3)} s`);
  return {
    tick(label: string) {
      const elapsed = Date.now() - start;
      const eta = n > 0 ? ` ETA ${fmt((elapsed / n) * (total - n))}` : '';
      n++;
      const line = `bench [${n}/${Math.max(total, n)}] ${label} — ${Math.max(0, total - n)} left${eta}`;
      readline.cursorTo(stream, 0);
      readline.clearLine(stream, 0);
      stream.write(line.slice(0, (stream.columns || 100) - 1));
    },
    done() {
      readline.cursorTo(stream, 0);
      readline.clearLine(stream, 0);
    },
  };
}
