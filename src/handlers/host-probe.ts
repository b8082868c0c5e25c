import type { AgentConfig } from '../config/index.js';
import { type Capabilities, probeCapabilities } from '../host/capabilities.js';
import { FilePool } from '../host/file-pool.js';
import { Libvirt } from '../host/libvirt.js';
import { Lvm } from '../host/lvm.js';
import { QemuImg } from '../host/qemu-img.js';
import type { Logger } from '../observability/logger.js';
import { CONCRETE_STRATEGIES, type StrategyName } from '../protocol/index.js';
import { type HostOptions, hostSupport } from '../snapshot/strategies/index.js';
import type { HostProbe, HostReport } from './ping.js';

/** Maps the capability probe to what ping reports; `auto` is listed when any strategy can run. */
export function hostReport(
  capabilities: Capabilities,
  options: HostOptions = { liveRotate: 'enabled' },
): HostReport {
  const support = hostSupport(capabilities, options);
  const strategies: StrategyName[] = CONCRETE_STRATEGIES.filter((s) => support[s].available);
  return {
    tools: {
      qemuImg: capabilities.tools.qemuImg,
      qemu: capabilities.tools.qemu,
      libvirt: capabilities.tools.libvirt,
      lvm2: capabilities.tools.lvm,
    },
    strategies: strategies.length > 0 ? ['auto', ...strategies] : [],
  };
}

/** The real host probe (src/host/capabilities.ts) with the host adapters built from config. */
export function capabilityProbe(config: AgentConfig, logger: Logger): HostProbe {
  const timeoutMs = Math.min(config.timeouts.toolMs, 15_000);
  const qemuImg = new QemuImg({ timeoutMs, exportTimeoutMs: config.timeouts.exportMs, logger });
  const deps = {
    qemuImg,
    libvirt: new Libvirt({ uri: config.libvirt.uri, timeoutMs, logger }),
    lvm: new Lvm({ timeoutMs, logger }),
    filePool: new FilePool({ roots: config.pools.fileRoots, qemuImg, timeoutMs, logger }),
    logger,
  };
  return async () => hostReport(await probeCapabilities(deps, config), config.snapshot);
}
