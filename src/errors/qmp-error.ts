import { AgentError } from './agent-error.js';

/**
 * QEMU refused a QMP (or HMP) command sent through libvirt. `qmpClass` is QEMU's error class
 * (GenericError, CommandNotFound, DeviceNotFound, DeviceNotActive, KVMMissingCap, or HmpError
 * for a human-monitor command that printed "Error: ..."); `desc` is QEMU's own text.
 * `code` is QMP_ + the class in upper snake case, e.g. QMP_GENERIC_ERROR, QMP_COMMAND_NOT_FOUND.
 */
export class QmpError extends AgentError {
  readonly qmpClass: string;
  readonly desc: string;
  readonly command: string;
  readonly domain: string;

  constructor(info: { domain: string; command: string; qmpClass: string; desc: string; cause?: unknown }) {
    super(
      qmpErrorCode(info.qmpClass),
      `QMP ${info.command} on domain ${info.domain} failed: ${info.qmpClass}: ${info.desc}`,
      {
        cause: info.cause,
        details: { domain: info.domain, command: info.command, qmpClass: info.qmpClass, desc: info.desc },
      },
    );
    this.qmpClass = info.qmpClass;
    this.desc = info.desc;
    this.command = info.command;
    this.domain = info.domain;
  }
}

/** GenericError → QMP_GENERIC_ERROR, KVMMissingCap → QMP_KVM_MISSING_CAP. */
export function qmpErrorCode(qmpClass: string): string {
  const snake = qmpClass
    .replace(/([a-z0-9])([A-Z])/g, '$1_$2')
    .replace(/([A-Z]+)([A-Z][a-z])/g, '$1_$2')
    .replace(/[^A-Za-z0-9]+/g, '_')
    .toUpperCase();
  return `QMP_${snake || 'ERROR'}`;
}
