// A throw-away TLS RabbitMQ node for the TLS tests: node clvmtls@localhost, TLS on 5862 (verify_peer,
// a client certificate required), its own HOME/cookie, data, log and config under /tmp, and a CA
// made with openssl. Started from /usr/lib/rabbitmq/bin (the /usr/sbin wrappers switch user and
// cookie). Idempotent: a node already answering with these certificates is reused.
import { spawn } from 'node:child_process';
import { existsSync, openSync, readFileSync } from 'node:fs';
import { chmod, mkdir, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { connect } from 'amqplib';
import { execa } from 'execa';

export const TLS_NODE = 'clvmtls@localhost';
export const TLS_PORT = 5862;
const PLAIN_PORT = 5861;
const DIST_PORT = 25862;
const BASE = '/tmp/i12-clvmtls';
const RABBIT_BIN = '/usr/lib/rabbitmq/bin';

export interface TlsBroker {
  url: string;
  /** CA that signed the node's and the client's certificates. */
  caFile: string;
  certFile: string;
  keyFile: string;
  /** A second CA that signed nothing the node presents. */
  otherCaFile: string;
  stop(): Promise<void>;
}

const dirs = {
  home: join(BASE, 'home'),
  data: join(BASE, 'data'),
  log: join(BASE, 'log'),
  conf: join(BASE, 'conf'),
  certs: join(BASE, 'certs'),
};

async function openssl(args: string[], cwd: string): Promise<void> {
  await execa('openssl', args, { cwd, timeout: 30_000 });
}

/** CA, server certificate (localhost, 127.0.0.1), client certificate, and an unrelated CA. */
async function makeCertificates(): Promise<void> {
  const d = dirs.certs;
  if (existsSync(join(d, 'done'))) return;
  await mkdir(d, { recursive: true });
  const ca = (name: string) =>
    openssl(
      [
        'req',
        '-x509',
        '-newkey',
        'ec',
        '-pkeyopt',
        'ec_paramgen_curve:P-256',
        '-nodes',
        '-days',
        '3',
        '-subj',
        `/CN=${name}`,
        '-keyout',
        `${name}.key`,
        '-out',
        `${name}.pem`,
      ],
      d,
    );
  const leaf = async (name: string, ext: string) => {
    await openssl(
      [
        'req',
        '-newkey',
        'ec',
        '-pkeyopt',
        'ec_paramgen_curve:P-256',
        '-nodes',
        '-subj',
        `/CN=${name}`,
        '-keyout',
        `${name}.key`,
        '-out',
        `${name}.csr`,
      ],
      d,
    );
    await writeFile(join(d, `${name}.ext`), ext);
    await openssl(
      [
        'x509',
        '-req',
        '-in',
        `${name}.csr`,
        '-CA',
        'ca.pem',
        '-CAkey',
        'ca.key',
        '-CAcreateserial',
        '-days',
        '3',
        '-extfile',
        `${name}.ext`,
        '-out',
        `${name}.pem`,
      ],
      d,
    );
  };
  await ca('ca');
  await ca('other-ca');
  await leaf('server', 'subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n');
  await leaf('client', 'extendedKeyUsage=clientAuth\n');
  await writeFile(join(d, 'done'), '');
}

function nodeEnv(): Record<string, string> {
  return {
    PATH: process.env.PATH ?? '/usr/bin:/bin',
    HOME: dirs.home,
    RABBITMQ_NODENAME: TLS_NODE,
    RABBITMQ_NODE_PORT: String(PLAIN_PORT),
    RABBITMQ_DIST_PORT: String(DIST_PORT),
    RABBITMQ_CONF_ENV_FILE: join(dirs.conf, 'empty-env.conf'),
    RABBITMQ_CONFIG_FILE: join(dirs.conf, 'rabbitmq.conf'),
    RABBITMQ_ADVANCED_CONFIG_FILE: join(dirs.conf, 'advanced.config'),
    RABBITMQ_ENABLED_PLUGINS_FILE: join(dirs.conf, 'enabled_plugins'),
    RABBITMQ_MNESIA_BASE: dirs.data,
    RABBITMQ_LOG_BASE: dirs.log,
    RABBITMQ_PID_FILE: join(dirs.data, 'node.pid'),
    RABBITMQ_PLUGINS_EXPAND_DIR: join(dirs.data, 'plugins-expand'),
    RABBITMQ_GENERATED_CONFIG_DIR: join(dirs.data, 'generated'),
    RABBITMQ_SCHEMA_DIR: join(dirs.data, 'schema'),
  };
}

async function writeNodeConfig(): Promise<void> {
  for (const dir of Object.values(dirs)) await mkdir(dir, { recursive: true });
  const cookie = join(dirs.home, '.erlang.cookie');
  if (!existsSync(cookie)) {
    await writeFile(cookie, `I12CLVMTLS${Date.now()}`);
    await chmod(cookie, 0o400);
  }
  const c = dirs.certs;
  await writeFile(join(dirs.conf, 'empty-env.conf'), '');
  await writeFile(join(dirs.conf, 'enabled_plugins'), '[].\n');
  await writeFile(join(dirs.conf, 'advanced.config'), '[].\n');
  await writeFile(
    join(dirs.conf, 'rabbitmq.conf'),
    [
      `listeners.tcp.default = 127.0.0.1:${PLAIN_PORT}`,
      `listeners.ssl.default = 127.0.0.1:${TLS_PORT}`,
      `ssl_options.cacertfile = ${join(c, 'ca.pem')}`,
      `ssl_options.certfile = ${join(c, 'server.pem')}`,
      `ssl_options.keyfile = ${join(c, 'server.key')}`,
      'ssl_options.verify = verify_peer',
      'ssl_options.fail_if_no_peer_cert = true',
      'log.console = false',
      'log.file.level = warning',
      '',
    ].join('\n'),
  );
}

function files(): Pick<TlsBroker, 'caFile' | 'certFile' | 'keyFile' | 'otherCaFile'> {
  const c = dirs.certs;
  return {
    caFile: join(c, 'ca.pem'),
    certFile: join(c, 'client.pem'),
    keyFile: join(c, 'client.key'),
    otherCaFile: join(c, 'other-ca.pem'),
  };
}

async function answers(url: string, f: ReturnType<typeof files>): Promise<boolean> {
  try {
    const model = await connect(url, {
      ca: readFileSync(f.caFile),
      cert: readFileSync(f.certFile),
      key: readFileSync(f.keyFile),
      timeout: 3000,
    });
    await model.close();
    return true;
  } catch {
    return false;
  }
}

/** Starts the node (or reuses a running one) and resolves once a TLS AMQP connection works. */
export async function startTlsBroker(timeoutMs = 90_000): Promise<TlsBroker> {
  const rabbitmqServer = join(RABBIT_BIN, 'rabbitmq-server');
  if (!existsSync(rabbitmqServer))
    throw new Error(`${rabbitmqServer} is missing: the TLS tests need RabbitMQ installed`);
  await makeCertificates();
  const url = `amqps://guest:guest@localhost:${TLS_PORT}`;
  const f = files();
  if (!(await answers(url, f))) {
    await writeNodeConfig();
    const out = openSync(join(dirs.log, 'start.out'), 'a');
    const child = spawn(rabbitmqServer, [], { env: nodeEnv(), detached: true, stdio: ['ignore', out, out] });
    child.unref();
    const until = Date.now() + timeoutMs;
    while (!(await answers(url, f))) {
      if (child.exitCode !== null) {
        throw new Error(`the TLS node exited (${child.exitCode}); see ${join(dirs.log, 'start.out')}`);
      }
      if (Date.now() > until)
        throw new Error(`the TLS node did not answer within ${timeoutMs} ms; see ${dirs.log}`);
      await new Promise((r) => setTimeout(r, 250));
    }
  }
  return {
    url,
    ...f,
    async stop() {
      await execa(join(RABBIT_BIN, 'rabbitmqctl'), ['-n', TLS_NODE, 'stop'], {
        env: nodeEnv(),
        extendEnv: false,
        timeout: 60_000,
        reject: false,
      });
      // The next start is a fresh node (the certificates are kept: they are slow-ish to make).
      await rm(dirs.data, { recursive: true, force: true });
    },
  };
}
