//! The GSI routing table: which interrupt-controller pins a global system
//! interrupt (`KVM_IRQ_LINE`, irqfd) drives.
//!
//! KVM's default sends GSI n to PIC pin n and IOAPIC pin n. A PC, and QEMU's
//! `pc` machine that kvm-unit-tests expects, routes the timer (GSI 0) to
//! IOAPIC pin 2 (the MADT's interrupt source override) and keeps pin 2 of the
//! PICs for the cascade, so ktvmm installs the same table.

use kvm_bindings::{
    KVM_IRQ_ROUTING_IRQCHIP, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE,
    KvmIrqRouting, kvm_irq_routing_entry, kvm_irq_routing_entry__bindgen_ty_1,
    kvm_irq_routing_irqchip,
};

/// Number of IOAPIC inputs.
pub const IOAPIC_PINS: u32 = 24;

fn route(gsi: u32, irqchip: u32, pin: u32) -> kvm_irq_routing_entry {
    kvm_irq_routing_entry {
        gsi,
        type_: KVM_IRQ_ROUTING_IRQCHIP,
        u: kvm_irq_routing_entry__bindgen_ty_1 {
            irqchip: kvm_irq_routing_irqchip { irqchip, pin },
        },
        ..Default::default()
    }
}

/// (GSI, irqchip, pin) for every route of the PC table.
pub fn pc_routes() -> Vec<(u32, u32, u32)> {
    let mut routes = Vec::new();
    for irq in (0..8).filter(|&irq| irq != 2) {
        routes.push((irq, KVM_IRQCHIP_PIC_MASTER, irq));
    }
    for irq in 8..16 {
        routes.push((irq, KVM_IRQCHIP_PIC_SLAVE, irq - 8));
    }
    routes.push((0, KVM_IRQCHIP_IOAPIC, 2));
    for pin in (1..IOAPIC_PINS).filter(|&pin| pin != 2) {
        routes.push((pin, KVM_IRQCHIP_IOAPIC, pin));
    }
    routes
}

/// The PC table in KVM's form.
pub fn pc_routing() -> Result<KvmIrqRouting, vmm_sys_util::fam::Error> {
    let entries: Vec<kvm_irq_routing_entry> = pc_routes()
        .into_iter()
        .map(|(gsi, chip, pin)| route(gsi, chip, pin))
        .collect();
    KvmIrqRouting::from_entries(&entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pins_of(gsi: u32) -> Vec<(u32, u32)> {
        pc_routes()
            .into_iter()
            .filter(|r| r.0 == gsi)
            .map(|r| (r.1, r.2))
            .collect()
    }

    #[test]
    fn the_timer_goes_to_ioapic_pin_2_and_pic_pin_0() {
        assert_eq!(
            pins_of(0),
            vec![(KVM_IRQCHIP_PIC_MASTER, 0), (KVM_IRQCHIP_IOAPIC, 2)]
        );
        assert!(pins_of(2).is_empty(), "GSI 2 is the PIC cascade");
    }

    #[test]
    fn isa_and_pci_gsis_keep_their_pins() {
        assert_eq!(
            pins_of(4),
            vec![(KVM_IRQCHIP_PIC_MASTER, 4), (KVM_IRQCHIP_IOAPIC, 4)]
        );
        assert_eq!(
            pins_of(14),
            vec![(KVM_IRQCHIP_PIC_SLAVE, 6), (KVM_IRQCHIP_IOAPIC, 14)]
        );
        assert_eq!(pins_of(18), vec![(KVM_IRQCHIP_IOAPIC, 18)]);
        assert_eq!(pc_routing().unwrap().as_slice().len(), 7 + 8 + 23);
    }
}
