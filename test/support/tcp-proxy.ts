// A small TCP proxy for making the broker "go away" in a test without touching the shared
// RabbitMQ: point the agent at the proxy, then stop it (refuses connections, cuts open ones),
// cut() open connections only, freeze() them (no byte moves), or blackhole() new ones (accept,
// never answer: stalls the handshake).
import { once } from 'node:events';
import { createServer, type Server, type Socket, connect as tcpConnect } from 'node:net';

export interface ProxyTarget {
  host: string;
  port: number;
}

type Mode = 'forward' | 'blackhole';

export class TcpProxy {
  private server: Server | undefined;
  private readonly sockets = new Set<Socket>();
  private readonly clients = new Set<Socket>();
  private mode: Mode = 'forward';
  private frozen = false;
  private readonly held: Array<{ to: Socket; chunk: Buffer }> = [];
  private listenPort = 0;
  /** Connections accepted since start (forwarded or held). */
  accepted = 0;

  private constructor(private readonly target: ProxyTarget) {}

  /** Starts a proxy on 127.0.0.1 (a free port) forwarding to `target`. */
  static async start(target: ProxyTarget): Promise<TcpProxy> {
    const proxy = new TcpProxy(target);
    await proxy.listen();
    return proxy;
  }

  /** Proxy for the broker of an amqp:// URL; `urlFor` gives the URL to hand to the code under test. */
  static async forUrl(brokerUrl: string): Promise<TcpProxy> {
    const parsed = new URL(brokerUrl);
    return TcpProxy.start({ host: parsed.hostname, port: Number(parsed.port || 5672) });
  }

  get port(): number {
    return this.listenPort;
  }

  /** `brokerUrl` with its host and port replaced by the proxy's. */
  urlFor(brokerUrl: string): string {
    const parsed = new URL(brokerUrl);
    parsed.hostname = '127.0.0.1';
    parsed.port = String(this.listenPort);
    return parsed.toString();
  }

  /** Open client connections right now. */
  get openConnections(): number {
    return this.clients.size;
  }

  /** Stops listening and destroys every open connection: the broker looks down (connection refused). */
  async stop(): Promise<void> {
    const server = this.server;
    this.server = undefined;
    this.cut();
    if (server) await new Promise<void>((resolve) => server.close(() => resolve()));
  }

  /** Listens again on the same port, forwarding as before. */
  async resume(): Promise<void> {
    this.mode = 'forward';
    this.frozen = false;
    if (!this.server) await this.listen();
  }

  /** Destroys every open connection but keeps listening (a network blip). */
  cut(): void {
    for (const socket of this.sockets) socket.destroy();
    this.sockets.clear();
    this.clients.clear();
    this.held.splice(0);
  }

  /** New connections are accepted but never forwarded nor answered (a stalled peer). */
  blackhole(): void {
    this.mode = 'blackhole';
  }

  /** Stops for good. */
  async close(): Promise<void> {
    await this.stop();
  }

  private async listen(): Promise<void> {
    const server = createServer((client) => this.onClient(client));
    server.listen(this.listenPort, '127.0.0.1');
    await once(server, 'listening');
    const address = server.address();
    if (!address || typeof address === 'string') throw new Error('tcp proxy: no port');
    this.listenPort = address.port;
    this.server = server;
  }

  private onClient(client: Socket): void {
    this.accepted += 1;
    this.track(client);
    this.clients.add(client);
    client.on('close', () => this.clients.delete(client));
    if (this.mode === 'blackhole') return;
    const upstream = tcpConnect(this.target.port, this.target.host);
    this.track(upstream);
    const closeBoth = () => {
      client.destroy();
      upstream.destroy();
    };
    client.on('error', closeBoth);
    upstream.on('error', closeBoth);
    client.on('close', closeBoth);
    upstream.on('close', closeBoth);
    this.forward(client, upstream);
    this.forward(upstream, client);
  }

  /** Copies `from` to `to`, holding the bytes back while the proxy is frozen. */
  private forward(from: Socket, to: Socket): void {
    from.on('data', (chunk: Buffer) => {
      if (this.frozen) this.held.push({ to, chunk });
      else if (!to.destroyed) to.write(chunk);
    });
  }

  /**
   * Open connections stay up but no byte moves in either direction (a hung peer or a
   * partitioned network): publishes get no confirm, heartbeats stop. thaw() delivers what was held.
   */
  freeze(): void {
    this.frozen = true;
  }

  thaw(): void {
    this.frozen = false;
    for (const { to, chunk } of this.held.splice(0)) if (!to.destroyed) to.write(chunk);
  }

  private track(socket: Socket): void {
    this.sockets.add(socket);
    socket.on('error', () => socket.destroy());
    socket.on('close', () => this.sockets.delete(socket));
  }
}
