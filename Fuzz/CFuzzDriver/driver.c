#include <stddef.h>
#include <stdint.h>
#include "CFuzzDriver.h"

int LLVMFuzzerRunDriver(int *argc, char ***argv, int (*callback)(const uint8_t *data, size_t size));
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define ENTRY(target) \
    int target##_main(int argc, char **argv) { return LLVMFuzzerRunDriver(&argc, &argv, LLVMFuzzerTestOneInput); }

ENTRY(FuzzHTTP1Request)
ENTRY(FuzzHTTP1Response)
ENTRY(FuzzBodyFramer)
ENTRY(FuzzProxyProtocol)
ENTRY(FuzzHTTP2Bridge)
ENTRY(FuzzHTTP2Upstream)
ENTRY(FuzzPathNormalization)
ENTRY(FuzzXFCC)
ENTRY(FuzzConfig)
ENTRY(FuzzCertbotRenewal)
ENTRY(FuzzCRL)

ENTRY(FuzzOCSPResponse)
ENTRY(FuzzHTTP2Frames)
