//! Which implementation of the curve arithmetic verifies signatures here.
//!
//! curve25519-dalek picks its backend at run time from the CPU's flags, among
//! those compiled in: the AVX-512 IFMA one only when the build passed
//! `--cfg curve25519_dalek_backend="avx512"` (the workspace's
//! `.cargo/config.toml` does), AVX2 on every x86-64 build. It does not say
//! which it chose, so this repeats its rule; operators see the answer in the
//! start-up log, and a test checks that a CPU with IFMA gets it.

/// The backend curve25519-dalek uses on this CPU: `"avx512ifma"`, `"avx2"`
/// or `"portable"`.
pub fn signature_backend() -> &'static str {
    #[cfg(target_arch = "x86_64")]
    {
        #[cfg(curve25519_dalek_backend = "avx512")]
        if std::arch::is_x86_feature_detected!("avx512ifma")
            && std::arch::is_x86_feature_detected!("avx512vl")
        {
            return "avx512ifma";
        }
        if std::arch::is_x86_feature_detected!("avx2") {
            return "avx2";
        }
    }
    "portable"
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Fails when a build loses the IFMA backend (say `.cargo/config.toml`
    /// is dropped or overridden) on a CPU that has the instructions.
    #[test]
    fn a_cpu_with_ifma_gets_the_ifma_backend() {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx512ifma")
            && std::arch::is_x86_feature_detected!("avx512vl")
        {
            assert_eq!(
                signature_backend(),
                "avx512ifma",
                "this CPU has AVX-512 IFMA but the build did not compile curve25519-dalek's \
                 backend for it: build with the workspace's .cargo/config.toml"
            );
            return;
        }
        assert_ne!(signature_backend(), "avx512ifma");
    }
}
