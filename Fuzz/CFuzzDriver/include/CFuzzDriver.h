#ifndef C_FUZZ_DRIVER_H
#define C_FUZZ_DRIVER_H

/// The fuzz targets' entry points. SwiftPM links an executable with `main` aliased to
/// `<Module>_main`, which a target built with `-parse-as-library` (as libFuzzer needs)
/// never defines; these run libFuzzer's driver on the target's LLVMFuzzerTestOneInput.
/// A new fuzz target adds its line to driver.c. No logic.

#endif
