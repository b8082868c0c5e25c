export * from './commands.js';
export * from './error-codes.js';
export * from './events.js';
export * from './names.js';
export * from './routing.js';
export * from './signing.js';
