import { NotImplementedError } from '../errors/index.js';
import { commandTypesHandledBy } from '../jobs/command-table.js';
import type { CommandHandlerFn, HandlerRegistry } from '../jobs/types.js';
import type { CommandType } from '../protocol/index.js';

/** Command types the snapshot engine implements; until it registers them they answer NOT_IMPLEMENTED. */
export const ENGINE_COMMAND_TYPES = commandTypesHandledBy('engine');

function notImplemented(type: CommandType): CommandHandlerFn {
  return async () => {
    // Nothing ran: the failed event says rolledBack: true (no step journaled).
    throw new NotImplementedError(`command type ${type}`);
  };
}

/** A `failed` NOT_IMPLEMENTED answer for every engine command type (never a silent drop). */
export function notImplementedHandlers(): HandlerRegistry {
  return Object.fromEntries(ENGINE_COMMAND_TYPES.map((t) => [t, notImplemented(t)])) as HandlerRegistry;
}
