import { AgentError } from './agent-error.js';

/** A file the agent was about to create (image, clone, published snapshot, rename target) already exists. */
export class PathExistsError extends AgentError {
  constructor(path: string) {
    super('PATH_EXISTS', `${path} already exists; refusing to overwrite it`, { details: { path } });
  }
}
