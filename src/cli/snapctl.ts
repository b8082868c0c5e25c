#!/usr/bin/env node
// snapctl: the operator CLI of clvm-snapshot-agent. Exit codes: see src/cli/exit-codes.ts.
import { runSnapctl } from './program.js';

process.exitCode = await runSnapctl(process.argv.slice(2), {
  stdout: process.stdout,
  stderr: process.stderr,
});
