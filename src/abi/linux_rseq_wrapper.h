/* Input to bindgen (tools/gen): the kernel's rseq UAPI as installed on the build machine. */
#include <linux/rseq.h>
