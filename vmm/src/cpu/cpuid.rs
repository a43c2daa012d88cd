//! The CPUID each vCPU sees: what KVM supports, with that vCPU's APIC ID.

use kvm_bindings::CpuId;

const LEAF_FEATURES: u32 = 0x1;
const LEAF_X2APIC_TOPOLOGY: u32 = 0xb;
const LEAF_V2_TOPOLOGY: u32 = 0x1f;
/// CPUID.1:ECX bit 31: running under a hypervisor.
const ECX_HYPERVISOR: u32 = 1 << 31;

/// `supported` (from `KVM_GET_SUPPORTED_CPUID`) adjusted for CPU `cpu`,
/// whose APIC ID is its index.
pub fn for_vcpu(supported: &CpuId, cpu: u32) -> CpuId {
    let mut cpuid = supported.clone();
    for entry in cpuid.as_mut_slice() {
        match entry.function {
            LEAF_FEATURES => {
                entry.ebx = (entry.ebx & 0x00ff_ffff) | (cpu & 0xff) << 24;
                entry.ecx |= ECX_HYPERVISOR;
            }
            LEAF_X2APIC_TOPOLOGY | LEAF_V2_TOPOLOGY => entry.edx = cpu,
            _ => {}
        }
    }
    cpuid
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvm_bindings::kvm_cpuid_entry2;

    #[test]
    fn each_vcpu_gets_its_own_apic_id() {
        let entries = [
            kvm_cpuid_entry2 {
                function: 1,
                ebx: 0xaa00_0800,
                ..Default::default()
            },
            kvm_cpuid_entry2 {
                function: 0xb,
                index: 1,
                edx: 7,
                ..Default::default()
            },
            kvm_cpuid_entry2 {
                function: 0xd,
                edx: 5,
                ..Default::default()
            },
        ];
        let supported = CpuId::from_entries(&entries).unwrap();
        let cpuid = for_vcpu(&supported, 3);
        let e = cpuid.as_slice();
        assert_eq!(e[0].ebx, 0x0300_0800);
        assert_ne!(e[0].ecx & ECX_HYPERVISOR, 0);
        assert_eq!(e[1].edx, 3);
        assert_eq!(e[2].edx, 5, "other leaves untouched");
    }
}
