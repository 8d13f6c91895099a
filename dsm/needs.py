"""What a node needs from the kernel: the uffd features a workload's handshake asks for and how
it registers the region. ``dsm doctor`` checks exactly these; ``dsm.attach`` uses them."""

from dsm.uffd import Feature, Ioctl, RegisterMode

#: every event the agent follows, write-protect faults (also on shmem), and thread ids
WORKLOAD_FEATURES = (
    Feature.PAGEFAULT_FLAG_WP
    | Feature.EVENT_FORK
    | Feature.EVENT_REMAP
    | Feature.EVENT_REMOVE
    | Feature.EVENT_UNMAP
    | Feature.THREAD_ID
    | Feature.MISSING_SHMEM
    | Feature.WP_HUGETLBFS_SHMEM
)
#: asked for where the kernel has it (Linux >= 6.6): a lost page then fails with SIGBUS at the
#: access itself (UFFDIO_POISON); without it the agent kills the faulting process
OPTIONAL_WORKLOAD_FEATURES = Feature.POISON
#: how a workload registers the region: missing pages and writes to read copies both fault
REGION_REGISTER_MODE = RegisterMode.MISSING | RegisterMode.WP
#: what the registered range must then allow the agent to do
REQUIRED_RANGE_IOCTLS = Ioctl.COPY | Ioctl.WRITEPROTECT
