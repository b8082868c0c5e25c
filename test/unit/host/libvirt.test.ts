// Pure parsing of what virsh and QEMU print. The inputs are copied from real QEMU 7.2 / libvirt 9.0 output.
import { describe, expect, it } from 'vitest';
import { QmpError, qmpErrorCode, ValidationError } from '../../../src/errors/index.js';
import { diskAliasesFromXml, parseDomBlkList, parseDomState } from '../../../src/host/libvirt.js';
import {
  type BlockNode,
  blockInfoMatchesAlias,
  chainFromGraph,
  checkHmpOutput,
  parseQmpReply,
  qcow2Blockdev,
  reopenWithBacking,
} from '../../../src/host/qmp.js';

describe('virsh output parsing', () => {
  it('reads domstate --reason', () => {
    expect(parseDomState('running (booted)\n\n')).toEqual({ state: 'running', reason: 'booted' });
    expect(parseDomState('shut off (destroyed)\n')).toEqual({ state: 'shut off', reason: 'destroyed' });
    expect(parseDomState('paused (user)')).toEqual({ state: 'paused', reason: 'user' });
    expect(parseDomState('\n')).toBeNull();
  });

  it('reads domblklist --details', () => {
    const text = [
      ' Type    Device   Target   Source',
      '----------------------------------------',
      ' block   disk     vda      /dev/loop1',
      ' file    disk     vdb      /var/lib/images/my disk.qcow2',
      ' file    cdrom    hdc      -',
      '',
    ].join('\n');
    expect(parseDomBlkList(text)).toEqual([
      { type: 'block', device: 'disk', target: 'vda', source: '/dev/loop1' },
      { type: 'file', device: 'disk', target: 'vdb', source: '/var/lib/images/my disk.qcow2' },
      { type: 'file', device: 'cdrom', target: 'hdc', source: '-' },
    ]);
  });

  it('maps disk targets to aliases from the live XML', () => {
    const xml = `<domain type='qemu' id='3'>
    <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='/tmp/new.qcow2' index='2'/>
      <backingStore type='file' index='1'>
        <format type='qcow2'/>
        <source file='/tmp/base.qcow2'/>
        <backingStore/>
      </backingStore>
      <target dev='vda' bus='virtio'/>
      <alias name='virtio-disk0'/>
    </disk>
    <disk type="block" device="disk">
      <target dev="vdb" bus="virtio"/>
      <alias name="ua-data"/>
    </disk>
    <controller type='usb' index='0'><alias name='usb'/></controller>
    </devices></domain>`;
    expect([...diskAliasesFromXml(xml)]).toEqual([
      ['vda', 'virtio-disk0'],
      ['vdb', 'ua-data'],
    ]);
  });
});

describe('QMP replies', () => {
  it('returns the "return" value', () => {
    expect(parseQmpReply('d', 'query-version', '{"return":{"qemu":{"major":7}},"id":"libvirt-1"}\n')).toEqual(
      {
        qemu: { major: 7 },
      },
    );
    expect(parseQmpReply('d', 'human-monitor-command', '{"return":"","id":"libvirt-2"}')).toBe('');
  });

  it('throws QmpError with the QEMU class and description', () => {
    const text =
      '{"id":"libvirt-417","error":{"class":"GenericError","desc":"Failed to find node with node-name=\'zzz\'"}}';
    let caught: unknown;
    try {
      parseQmpReply('dom1', 'blockdev-del', text);
    } catch (error) {
      caught = error;
    }
    expect(caught).toBeInstanceOf(QmpError);
    expect(caught).toMatchObject({
      code: 'QMP_GENERIC_ERROR',
      qmpClass: 'GenericError',
      desc: "Failed to find node with node-name='zzz'",
      command: 'blockdev-del',
      domain: 'dom1',
      retryable: false,
    });
    expect((caught as QmpError).details).toMatchObject({ qmpClass: 'GenericError', command: 'blockdev-del' });
  });

  it('refuses replies that are not QMP', () => {
    expect(() => parseQmpReply('d', 'x', 'not json')).toThrow(QmpError);
    expect(() => parseQmpReply('d', 'x', '{"id":"1"}')).toThrow(/no "return"/);
  });

  it('names error codes after the QMP class', () => {
    expect(qmpErrorCode('GenericError')).toBe('QMP_GENERIC_ERROR');
    expect(qmpErrorCode('CommandNotFound')).toBe('QMP_COMMAND_NOT_FOUND');
    expect(qmpErrorCode('DeviceNotActive')).toBe('QMP_DEVICE_NOT_ACTIVE');
    expect(qmpErrorCode('KVMMissingCap')).toBe('QMP_KVM_MISSING_CAP');
    expect(qmpErrorCode('HmpError')).toBe('QMP_HMP_ERROR');
  });

  it('turns HMP "Error:" output into a QmpError', () => {
    expect(checkHmpOutput('d', 'info version', '7.2.22Debian\r\n')).toBe('7.2.22Debian\r\n');
    expect(() => checkHmpOutput('d', 'qemu-io -d x "flush"', "Error: Device 'x' not found\r\n")).toThrow(
      expect.objectContaining({ qmpClass: 'HmpError', desc: "Device 'x' not found" }),
    );
  });
});

describe('disk chain from the block graph', () => {
  // After two blockdev-snapshots and a reopen: overlay-2 → store-snap-1, a libvirt node left aside.
  const graph = {
    nodes: [
      { name: 'store-snap-1', type: 'block-driver', id: 4 },
      { name: 'store-snap-1-file', type: 'block-driver', id: 5 },
      { name: 'overlay-2', type: 'block-driver', id: 2 },
      { name: 'overlay-2-file', type: 'block-driver', id: 3 },
      { name: 'libvirt-1-format', type: 'block-driver', id: 6 },
      { name: '/machine/peripheral/virtio-disk0/virtio-backend', type: 'block-backend', id: 1 },
    ],
    edges: [
      { name: 'file', parent: 4, child: 5 },
      { name: 'file', parent: 2, child: 3 },
      { name: 'backing', parent: 2, child: 4 },
      { name: 'root', parent: 1, child: 2 },
    ],
  };
  const nodes = [
    { 'node-name': 'store-snap-1', drv: 'qcow2', ro: true, file: '/store/snap-1' },
    { 'node-name': 'store-snap-1-file', drv: 'file', ro: true, file: '/store/snap-1' },
    {
      'node-name': 'overlay-2',
      drv: 'qcow2',
      ro: false,
      file: 'json:{"backing": {"driver": "qcow2"}, "driver": "qcow2", "file": {"driver": "host_device", "filename": "/dev/loop1"}}',
    },
    { 'node-name': 'overlay-2-file', drv: 'host_device', ro: false, file: '/dev/loop1' },
    { 'node-name': 'libvirt-1-format', drv: 'qcow2', ro: true, file: '/dev/loop0' },
  ];

  it('walks backing edges top first, with protocol nodes and real filenames', () => {
    expect(chainFromGraph('d', 'overlay-2', graph, nodes)).toEqual<BlockNode[]>([
      {
        nodeName: 'overlay-2',
        driver: 'qcow2',
        fileNodeName: 'overlay-2-file',
        fileDriver: 'host_device',
        filename: '/dev/loop1',
        backingFilename: '/store/snap-1',
        readOnly: false,
      },
      {
        nodeName: 'store-snap-1',
        driver: 'qcow2',
        fileNodeName: 'store-snap-1-file',
        fileDriver: 'file',
        filename: '/store/snap-1',
        backingFilename: null,
        readOnly: true,
      },
    ]);
  });

  it('fails on a node QEMU did not describe or on a loop', () => {
    expect(() => chainFromGraph('d', 'overlay-2', graph, nodes.slice(0, 2))).toThrow(QmpError);
    const loop = { ...graph, edges: [...graph.edges, { name: 'backing', parent: 4, child: 2 }] };
    expect(() => chainFromGraph('d', 'overlay-2', loop, nodes)).toThrow(/loops/);
  });

  it('matches query-block entries by libvirt alias', () => {
    const entry = { device: '', qdev: '/machine/peripheral/virtio-disk0/virtio-backend' };
    expect(blockInfoMatchesAlias(entry, 'virtio-disk0')).toBe(true);
    expect(blockInfoMatchesAlias(entry, 'virtio-disk1')).toBe(false);
    expect(blockInfoMatchesAlias({ device: 'drive-virtio-disk1' }, 'virtio-disk1')).toBe(true);
  });
});

describe('blockdev option builders', () => {
  it('builds a qcow2 node over a file or a host device', () => {
    expect(
      qcow2Blockdev({
        nodeName: 'snap',
        filename: '/s/snap-1',
        sourceType: 'file',
        readOnly: true,
        backing: null,
      }),
    ).toEqual({
      driver: 'qcow2',
      'node-name': 'snap',
      'read-only': true,
      file: { driver: 'file', 'node-name': 'snap-file', filename: '/s/snap-1', 'read-only': true },
      backing: null,
    });
    const block = qcow2Blockdev({ nodeName: 'ov', filename: '/dev/loop3', sourceType: 'block' });
    expect(block.file).toMatchObject({ driver: 'host_device' });
    expect('backing' in block).toBe(false);
  });

  it('builds reopen options that keep the node and change its backing', () => {
    const node: BlockNode = {
      nodeName: 'libvirt-2-format',
      driver: 'qcow2',
      fileNodeName: 'libvirt-2-storage',
      fileDriver: 'host_device',
      filename: '/dev/loop1',
      backingFilename: '/dev/loop0',
      readOnly: false,
    };
    expect(reopenWithBacking(node, 'store-snap-1')).toEqual({
      driver: 'qcow2',
      'node-name': 'libvirt-2-format',
      'read-only': false,
      file: 'libvirt-2-storage',
      backing: 'store-snap-1',
    });
    expect(() => reopenWithBacking({ ...node, fileNodeName: null }, 'x')).toThrow(ValidationError);
  });
});
