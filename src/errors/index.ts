export { AgentError, type AgentErrorOptions, toAgentError } from './agent-error.js';
export { ConfigError } from './config-error.js';
export { HostCommandError, type HostCommandFailureKind } from './host-command-error.js';
export { NotImplementedError } from './not-implemented-error.js';
export { QmpError, qmpErrorCode } from './qmp-error.js';
export { ValidationError } from './validation-error.js';
