//! A valid shared library that exports a C function but no abi_stable root module: loading it as
//! a plugin must fail with a message that says so. Used only by the loader's failure tests.

/// An exported function, so that the library has a symbol table worth the name.
#[no_mangle]
pub extern "C" fn egresswatch_test_no_root_answer() -> u32 {
    42
}
