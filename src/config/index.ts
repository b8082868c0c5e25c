export { type AgentConfig, commandQueueName, type LoadConfigOptions, loadConfig } from './load.js';
export { configSchema } from './schema.js';
