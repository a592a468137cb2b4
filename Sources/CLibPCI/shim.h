#ifndef VGPU_CLIBPCI_SHIM_H
#define VGPU_CLIBPCI_SHIM_H

#include <pci/pci.h>

// pci_alloc() leaves the access's error, warning and debug callbacks NULL;
// pci_init() would fill them, but it also picks an access method (and exits
// the process when there is none), which a look-up of names does not need.
// libpci calls them on a name it cannot find or an ID file it cannot read, so
// a look-up without pci_init needs these set (pciutils' lib/init.c fills the
// same three fields in pci_init_v35).
static void vgpu_pci_ignore(char *msg, ...) { (void)msg; }
static inline void vgpu_pci_quiet(struct pci_access *a) {
  a->error = vgpu_pci_ignore;
  a->warning = vgpu_pci_ignore;
  a->debug = vgpu_pci_ignore;
}

// pci_lookup_name() is variadic, which Swift cannot call. These fixed-arity
// wrappers cover the look-ups lspci makes (see pciutils' lspci.c, show_terse).

static inline char *vgpu_pci_lookup_class(struct pci_access *a, char *buf, int size,
                                          int flags, unsigned int device_class) {
  return pci_lookup_name(a, buf, size, flags | PCI_LOOKUP_CLASS, device_class);
}

static inline char *vgpu_pci_lookup_progif(struct pci_access *a, char *buf, int size,
                                           int flags, unsigned int device_class,
                                           unsigned int prog_if) {
  return pci_lookup_name(a, buf, size, flags | PCI_LOOKUP_PROGIF, device_class, prog_if);
}

static inline char *vgpu_pci_lookup_vendor(struct pci_access *a, char *buf, int size,
                                           int flags, unsigned int vendor) {
  return pci_lookup_name(a, buf, size, flags | PCI_LOOKUP_VENDOR, vendor);
}

static inline char *vgpu_pci_lookup_device(struct pci_access *a, char *buf, int size,
                                           int flags, unsigned int vendor,
                                           unsigned int device) {
  return pci_lookup_name(a, buf, size, flags | PCI_LOOKUP_DEVICE, vendor, device);
}

// Vendor and device together, as lspci prints them ("Red Hat, Inc. Virtio RNG").
static inline char *vgpu_pci_lookup_vendor_device(struct pci_access *a, char *buf, int size,
                                                  int flags, unsigned int vendor,
                                                  unsigned int device) {
  return pci_lookup_name(a, buf, size, flags | PCI_LOOKUP_VENDOR | PCI_LOOKUP_DEVICE,
                         vendor, device);
}

// Subsystem as lspci -v prints it: the subsystem vendor and the subsystem device.
static inline char *vgpu_pci_lookup_subsystem(struct pci_access *a, char *buf, int size,
                                              int flags, unsigned int vendor,
                                              unsigned int device, unsigned int sub_vendor,
                                              unsigned int sub_device) {
  return pci_lookup_name(a, buf, size,
                         flags | PCI_LOOKUP_SUBSYSTEM | PCI_LOOKUP_VENDOR | PCI_LOOKUP_DEVICE,
                         vendor, device, sub_vendor, sub_device);
}

#endif
