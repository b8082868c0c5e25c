import type { Writable } from 'node:stream';

/** Where snapctl writes: results on stdout, progress and errors on stderr. */
export interface CliIo {
  stdout: Writable & { isTTY?: boolean };
  stderr: Writable & { isTTY?: boolean };
}

export function writeLine(stream: Writable, line: string): void {
  stream.write(`${line}\n`);
}

/** `--json` output: one JSON document per line on stdout. */
export function writeJson(io: CliIo, value: unknown): void {
  writeLine(io.stdout, JSON.stringify(value));
}
