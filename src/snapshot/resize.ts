// volume.resize: grows a volume's virtual size (what the guest sees), also while its VM runs and
// after live rotations moved its active layer. On LVM each of the volume's LVs in the chain is
// lvextended first to hold a fully allocated QCOW2 of the new size (the active layer grows now,
// the base when the next rotation commits into it: QEMU's commit grows its base to the top's size);
// then the disk grows through libvirt (`virsh blockresize`) while the VM runs, so libvirt's
// description and QEMU agree, or with `qemu-img resize` while nothing holds it. Every step is
// idempotent: a job interrupted half-way is simply run again.
import { AgentError } from '../errors/index.js';
import type { JobContext } from '../jobs/types.js';
import type { VolumeResizeResult } from '../protocol/index.js';
import type { SnapshotDeps } from './deps.js';
import { existingActiveLayer, localLayers } from './live-layers.js';
import { inspectVm } from './vm.js';
import { LvmVolumeBackend } from './volumes.js';

type ResizeContext = JobContext<'volume.resize'>;

export async function resizeVolume(ctx: ResizeContext, deps: SnapshotDeps): Promise<VolumeResizeResult> {
  const params = ctx.command.params;
  const backend = await existingActiveLayer(params.volume, params.vm, deps);
  const vm = await inspectVm(deps.libvirt, params.vm, backend.activePath);
  const chain = await deps.store.readChain(backend.activePath);
  const previous = chain[0]!.virtualSize;
  if (params.sizeBytes < previous) {
    throw new AgentError(
      'VOLUME_SHRINK_REFUSED',
      `volume ${backend.activePath} is ${previous} bytes; shrinking it to ${params.sizeBytes} would cut off guest data`,
      { details: { path: backend.activePath, virtualSize: previous, sizeBytes: params.sizeBytes } },
    );
  }
  const stepCount = 2;
  ctx.progress({ step: 'grow-lvs', stepIndex: 0, stepCount });
  const lvs =
    backend instanceof LvmVolumeBackend
      ? await backend.growLayers(
          localLayers(
            backend,
            chain.map((m) => m.path),
          ),
          params.sizeBytes,
        )
      : [];
  ctx.progress({ step: 'grow-disk', stepIndex: 1, stepCount });
  let through: VolumeResizeResult['through'] = 'unchanged';
  if (params.sizeBytes > previous) {
    if (vm?.running && vm.target !== null) {
      // A block commit running on the disk changes its chain: let it finish first.
      await deps.libvirt.waitForBlockJob(vm.name, vm.target);
      await deps.libvirt.blockResize(vm.name, vm.target, params.sizeBytes);
      through = 'libvirt';
    } else {
      await deps.qemuImg.resize(backend.activePath, params.sizeBytes);
      through = 'qemu-img';
    }
  }
  const now = (await deps.qemuImg.info(backend.activePath, { forceShare: true })).virtualSize;
  if (now !== params.sizeBytes) {
    throw new AgentError(
      'VOLUME_STATE_UNEXPECTED',
      `volume ${backend.activePath} is ${now} bytes after growing it to ${params.sizeBytes}`,
      { details: { path: backend.activePath, virtualSize: now } },
    );
  }
  return {
    volumePath: backend.activePath,
    previousVirtualSize: previous,
    virtualSize: now,
    through,
    lvs,
  };
}
