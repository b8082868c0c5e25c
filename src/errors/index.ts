export { AgentError, type AgentErrorOptions, toAgentError } from './agent-error.js';
export { ConfigError } from './config-error.js';
export { HostCommandError, type HostCommandFailureKind } from './host-command-error.js';
export { LvmReportError } from './lvm-report-error.js';
export { LvmVolumeInUseError } from './lvm-volume-in-use-error.js';
export { LvmVolumeNotFoundError } from './lvm-volume-not-found-error.js';
export { NotImplementedError } from './not-implemented-error.js';
export { QmpError, qmpErrorCode } from './qmp-error.js';
export { ValidationError } from './validation-error.js';
