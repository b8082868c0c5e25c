import { describe, expect, it } from 'vitest';
import { diskSourcesFromXml } from '../../../src/host/libvirt.js';
import { baseNameOf, familyNames, isLayerName } from '../../../src/protocol/names.js';
import { volumeFamilyKey } from '../../../src/protocol/routing.js';

describe('layer names of a rotated file volume', () => {
  it('maps every name of the volume to its base name, and lists the layer names', () => {
    expect(baseNameOf('vol.qcow2')).toBe('vol.qcow2');
    expect(baseNameOf('vol.qcow2.lr-b')).toBe('vol.qcow2');
    expect(baseNameOf('vol.qcow2.lr-z')).toBe('vol.qcow2.lr-z'); // not one of ours
    expect(familyNames('vol.lr-c')).toEqual(['vol', 'vol.lr-a', 'vol.lr-b', 'vol.lr-c', 'vol.lr-d']);
    expect(isLayerName('vol.lr-a')).toBe(true);
    expect(isLayerName('vol.stg-0123456789')).toBe(false);
  });
});

describe('one lock for every name of a volume', () => {
  it('gives the base name and the layer names the same key, other volumes another', () => {
    const lvm = (lv: string) => volumeFamilyKey({ kind: 'lvm', vg: 'vg0', lv });
    const file = (name: string) => volumeFamilyKey({ kind: 'file', pool: '/p', file: name });
    expect(lvm('vol.lr-a')).toBe(lvm('vol'));
    expect(lvm('vol.lr-b')).toBe(lvm('vol'));
    expect(lvm('vol2')).not.toBe(lvm('vol'));
    expect(file('vol.qcow2.lr-a')).toBe(file('vol.qcow2'));
    expect(file('vol.qcow2')).not.toBe(lvm('vol.qcow2'));
  });
});

describe("libvirt's description of a disk chain", () => {
  it('reads the sources of one target, top first, unescaped', () => {
    const xml = `<domain><devices>
      <disk type='file' device='disk'><source file='/p/other'/><target dev='vdb' bus='virtio'/></disk>
      <disk type='file' device='disk'>
        <source file='/p/vol.lr-b' index='3'/>
        <backingStore type='file' index='1'><format type='qcow2'/><source file='/p/it&apos;s vol'/><backingStore/></backingStore>
        <target dev='vda' bus='virtio'/>
      </disk></devices></domain>`;
    expect(diskSourcesFromXml(xml, 'vda')).toEqual(['/p/vol.lr-b', "/p/it's vol"]);
    expect(diskSourcesFromXml(xml, 'vdc')).toEqual([]);
  });
});
