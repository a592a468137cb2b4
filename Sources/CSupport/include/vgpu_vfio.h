#ifndef VGPU_VFIO_H
#define VGPU_VFIO_H

// VFIO for Swift. <linux/vfio.h> defines its ioctl numbers with _IO(), a
// function-like macro Swift cannot import, so they are re-exported here as
// constants; the structs themselves import as they are. Citations are to the
// kernel's include/uapi/linux/vfio.h and Documentation/driver-api/vfio.rst.

#include <linux/vfio.h>
#include <stdint.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/resource.h>

// ioctl(2) is variadic; Swift imports neither it nor its overloads reliably.
// `arg` is the third argument as the kernel sees it: a value or a pointer.
static inline int vgpu_ioctl(int fd, unsigned long request, unsigned long arg) {
  return ioctl(fd, request, arg);
}

// VFIO pins DMA pages and counts them against RLIMIT_MEMLOCK (a macro Swift sees only as __RLIMIT_MEMLOCK).
static const int VGPU_RLIMIT_MEMLOCK = RLIMIT_MEMLOCK;

// Container (/dev/vfio/vfio), vfio.h "IOCTLs for VFIO file descriptor".
static const unsigned long VGPU_VFIO_GET_API_VERSION = VFIO_GET_API_VERSION;
static const unsigned long VGPU_VFIO_CHECK_EXTENSION = VFIO_CHECK_EXTENSION;
static const unsigned long VGPU_VFIO_SET_IOMMU = VFIO_SET_IOMMU;
static const int VGPU_VFIO_API_VERSION = VFIO_API_VERSION;
static const int VGPU_VFIO_TYPE1_IOMMU = VFIO_TYPE1_IOMMU;
static const int VGPU_VFIO_TYPE1v2_IOMMU = VFIO_TYPE1v2_IOMMU;

// Group (/dev/vfio/N), vfio.h "IOCTLs for GROUP file descriptors".
static const unsigned long VGPU_VFIO_GROUP_GET_STATUS = VFIO_GROUP_GET_STATUS;
static const unsigned long VGPU_VFIO_GROUP_SET_CONTAINER = VFIO_GROUP_SET_CONTAINER;
static const unsigned long VGPU_VFIO_GROUP_GET_DEVICE_FD = VFIO_GROUP_GET_DEVICE_FD;
static const uint32_t VGPU_VFIO_GROUP_FLAGS_VIABLE = VFIO_GROUP_FLAGS_VIABLE;
static const uint32_t VGPU_VFIO_GROUP_FLAGS_CONTAINER_SET = VFIO_GROUP_FLAGS_CONTAINER_SET;

// Device fd, vfio.h "IOCTLs for DEVICE file descriptors".
static const unsigned long VGPU_VFIO_DEVICE_GET_INFO = VFIO_DEVICE_GET_INFO;
static const unsigned long VGPU_VFIO_DEVICE_GET_REGION_INFO = VFIO_DEVICE_GET_REGION_INFO;
static const unsigned long VGPU_VFIO_DEVICE_GET_IRQ_INFO = VFIO_DEVICE_GET_IRQ_INFO;
static const unsigned long VGPU_VFIO_DEVICE_SET_IRQS = VFIO_DEVICE_SET_IRQS;
static const unsigned long VGPU_VFIO_DEVICE_RESET = VFIO_DEVICE_RESET;
static const uint32_t VGPU_VFIO_DEVICE_FLAGS_RESET = VFIO_DEVICE_FLAGS_RESET;
static const uint32_t VGPU_VFIO_DEVICE_FLAGS_PCI = VFIO_DEVICE_FLAGS_PCI;
static const uint32_t VGPU_VFIO_DEVICE_FLAGS_CAPS = VFIO_DEVICE_FLAGS_CAPS;
static const uint32_t VGPU_VFIO_REGION_INFO_FLAG_READ = VFIO_REGION_INFO_FLAG_READ;
static const uint32_t VGPU_VFIO_REGION_INFO_FLAG_WRITE = VFIO_REGION_INFO_FLAG_WRITE;
static const uint32_t VGPU_VFIO_REGION_INFO_FLAG_MMAP = VFIO_REGION_INFO_FLAG_MMAP;
static const uint32_t VGPU_VFIO_REGION_INFO_FLAG_CAPS = VFIO_REGION_INFO_FLAG_CAPS;
static const uint16_t VGPU_VFIO_REGION_INFO_CAP_SPARSE_MMAP = VFIO_REGION_INFO_CAP_SPARSE_MMAP;
static const uint32_t VGPU_VFIO_IRQ_SET_DATA_NONE = VFIO_IRQ_SET_DATA_NONE;
static const uint32_t VGPU_VFIO_IRQ_SET_DATA_EVENTFD = VFIO_IRQ_SET_DATA_EVENTFD;
static const uint32_t VGPU_VFIO_IRQ_SET_ACTION_TRIGGER = VFIO_IRQ_SET_ACTION_TRIGGER;
static const uint32_t VGPU_VFIO_IRQ_INFO_EVENTFD = VFIO_IRQ_INFO_EVENTFD;

// vfio-pci's fixed region and interrupt indexes (vfio.h, enum after "PCI").
static const uint32_t VGPU_VFIO_PCI_BAR0_REGION_INDEX = VFIO_PCI_BAR0_REGION_INDEX;
static const uint32_t VGPU_VFIO_PCI_CONFIG_REGION_INDEX = VFIO_PCI_CONFIG_REGION_INDEX;
static const uint32_t VGPU_VFIO_PCI_INTX_IRQ_INDEX = VFIO_PCI_INTX_IRQ_INDEX;
static const uint32_t VGPU_VFIO_PCI_MSI_IRQ_INDEX = VFIO_PCI_MSI_IRQ_INDEX;
static const uint32_t VGPU_VFIO_PCI_MSIX_IRQ_INDEX = VFIO_PCI_MSIX_IRQ_INDEX;

// Type1 IOMMU (container fd), vfio.h "IOCTLs for Type1 VFIO IOMMU".
static const unsigned long VGPU_VFIO_IOMMU_MAP_DMA = VFIO_IOMMU_MAP_DMA;
static const unsigned long VGPU_VFIO_IOMMU_UNMAP_DMA = VFIO_IOMMU_UNMAP_DMA;
static const uint32_t VGPU_VFIO_DMA_MAP_FLAG_READ = VFIO_DMA_MAP_FLAG_READ;
static const uint32_t VGPU_VFIO_DMA_MAP_FLAG_WRITE = VFIO_DMA_MAP_FLAG_WRITE;

// Sizes of headers that end in a flexible array, which Swift imports without it.
static const uint32_t VGPU_VFIO_IRQ_SET_HEADER_SIZE = sizeof(struct vfio_irq_set);
static const uint32_t VGPU_VFIO_SPARSE_MMAP_HEADER_SIZE = sizeof(struct vfio_region_info_cap_sparse_mmap);
static const uint32_t VGPU_VFIO_SPARSE_MMAP_AREA_SIZE = sizeof(struct vfio_region_sparse_mmap_area);

#endif
