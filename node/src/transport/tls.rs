//! TLS identities and pinned certificate verification.
//!
//! Every node and client has one Ed25519 identity key. Its TLS certificate is
//! self-signed and carries that key as its subject public key, so the key a
//! TLS 1.3 handshake proves possession of (the `CertificateVerify`
//! signature) *is* the bftd identity.
//!
//! **Why pinning replaces PKI.** The cluster file already names every node's
//! key, and a client's identity is its key. There is no certificate authority
//! whose word we would add to that, so we check nothing a CA would vouch for:
//! validity dates, names, key usages, and the certificate's self-signature are
//! all ignored. What is checked is exactly what identifies a peer: the real
//! subject public key (parsed from the DER), that it is a valid, non-weak
//! Ed25519 key, that it equals the pinned key where one is expected, and that
//! the handshake signature verifies under it. Ignoring dates also means a
//! node's clock cannot break the cluster, and nobody has to rotate
//! certificates.
//!
//! Session resumption is disabled on both sides: a resumed TLS 1.3 session
//! skips the certificate, and a full handshake costs well under a millisecond
//! on a connection that lives for hours.

use super::stats::Counters;
use super::TransportError;
use bftd_crypto::{KeyPair, PublicKey};
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::Resumption;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{NoServerSessionStorage, ParsedCertificate};
use rustls::sign::{CertifiedKey, SingleCertAndKey};
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, Error as TlsError,
    PeerIncompatible, PeerMisbehaved, SignatureScheme,
};
use std::sync::Arc;
use zeroize::Zeroizing;

/// ALPN of node-to-node connections.
pub const ALPN_PEER: &[u8] = b"bftd-peer/1";
/// ALPN of client connections.
pub const ALPN_CLIENT: &[u8] = b"bftd-client/1";
/// The server name every dialer sends. TLS wants one; it is never checked,
/// because the server's key is pinned.
pub(crate) const SERVER_NAME: &str = "bftd";

/// DER of an Ed25519 `SubjectPublicKeyInfo` up to the key (RFC 8410):
/// `SEQUENCE { SEQUENCE { OID 1.3.101.112 }, BIT STRING (0 unused bits) }`.
/// DER is canonical and RFC 8410 forbids parameters, so this is the *only*
/// encoding of an Ed25519 SPKI: comparing the parsed SPKI field against it
/// is an exact structural check, not a pattern search.
const ED25519_SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];

/// PKCS#8 v2 (RFC 5958 `OneAsymmetricKey` with the public key) for Ed25519,
/// around the seed: the form ring produces itself and parses most strictly.
const PKCS8_V2_PREFIX: [u8; 16] = [
    0x30, 0x53, 0x02, 0x01, 0x01, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];
const PKCS8_V2_MIDDLE: [u8; 5] = [0xa1, 0x23, 0x03, 0x21, 0x00];

/// The TLS signature schemes we accept: Ed25519 only, as identities are
/// Ed25519 keys.
const SCHEMES: [SignatureScheme; 1] = [SignatureScheme::ED25519];

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Builds `key`'s self-signed certificate and TLS signing key.
pub(crate) fn certified_key(key: &KeyPair) -> Result<Arc<CertifiedKey>, TransportError> {
    let seed = key.secret_seed();
    let public = key.public();
    let mut pkcs8 = Zeroizing::new(Vec::with_capacity(85));
    pkcs8.extend_from_slice(&PKCS8_V2_PREFIX);
    pkcs8.extend_from_slice(seed.as_ref());
    pkcs8.extend_from_slice(&PKCS8_V2_MIDDLE);
    pkcs8.extend_from_slice(&public.0);
    let der = PrivatePkcs8KeyDer::from(pkcs8.as_slice());

    let rcgen_key = rcgen::KeyPair::from_pkcs8_der_and_sign_algo(&der, &rcgen::PKCS_ED25519)
        .map_err(|source| TransportError::Certificate { source })?;
    let params = rcgen::CertificateParams::new(vec![SERVER_NAME.to_owned()])
        .map_err(|source| TransportError::Certificate { source })?;
    let certificate = params
        .self_signed(&rcgen_key)
        .map_err(|source| TransportError::Certificate { source })?;
    let signing_key = rustls::crypto::ring::sign::any_eddsa_type(&der)
        .map_err(|source| TransportError::Tls { source })?;
    Ok(Arc::new(CertifiedKey::new(
        vec![certificate.der().clone()],
        signing_key,
    )))
}

/// Why a certificate was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CertificateRejection {
    /// Not a parsable X.509 certificate.
    Malformed,
    /// The subject public key is not Ed25519.
    NotEd25519,
    /// An Ed25519 key that is not a valid curve point, or of small order.
    WeakKey,
}

impl From<CertificateRejection> for TlsError {
    fn from(rejection: CertificateRejection) -> TlsError {
        match rejection {
            CertificateRejection::Malformed => {
                TlsError::InvalidCertificate(CertificateError::BadEncoding)
            }
            CertificateRejection::NotEd25519 | CertificateRejection::WeakKey => {
                TlsError::InvalidCertificate(CertificateError::ApplicationVerificationFailure)
            }
        }
    }
}

/// The Ed25519 key a certificate's subject public key info carries, read
/// with a real DER parser (webpki, through rustls).
pub(crate) fn certificate_key(
    certificate: &CertificateDer<'_>,
) -> Result<PublicKey, CertificateRejection> {
    let parsed =
        ParsedCertificate::try_from(certificate).map_err(|_| CertificateRejection::Malformed)?;
    spki_key(parsed.subject_public_key_info().as_ref())
}

fn spki_key(spki: &[u8]) -> Result<PublicKey, CertificateRejection> {
    let raw = spki
        .strip_prefix(ED25519_SPKI_PREFIX.as_slice())
        .ok_or(CertificateRejection::NotEd25519)?;
    let bytes: [u8; 32] = raw
        .try_into()
        .map_err(|_| CertificateRejection::NotEd25519)?;
    let key = PublicKey(bytes);
    // Small-order keys must go: some signatures verify under them for any
    // message, so anyone could "prove" such an identity.
    key.validate().map_err(|_| CertificateRejection::WeakKey)?;
    Ok(key)
}

/// Verifies a TLS 1.3 `CertificateVerify` signature: Ed25519 only, under the
/// certificate's parsed subject key, which must equal `expected` if given.
fn verify_handshake_signature(
    message: &[u8],
    certificate: &CertificateDer<'_>,
    dss: &DigitallySignedStruct,
    expected: Option<PublicKey>,
) -> Result<HandshakeSignatureValid, TlsError> {
    if dss.scheme != SignatureScheme::ED25519 {
        return Err(PeerMisbehaved::SignedHandshakeWithUnadvertisedSigScheme.into());
    }
    let parsed = ParsedCertificate::try_from(certificate)?;
    let spki = parsed.subject_public_key_info();
    let key = spki_key(spki.as_ref())?;
    if expected.is_some_and(|expected| expected != key) {
        return Err(TlsError::InvalidCertificate(
            CertificateError::ApplicationVerificationFailure,
        ));
    }
    // The same parsed SPKI that was pinned is the one the signature is
    // checked against; the scheme was restricted to Ed25519 above.
    rustls::crypto::verify_tls13_signature_with_raw_key(
        message,
        &spki,
        dss,
        &rustls::crypto::ring::default_provider().signature_verification_algorithms,
    )
}

fn tls12_refused() -> Result<HandshakeSignatureValid, TlsError> {
    Err(PeerIncompatible::Tls13RequiredForQuic.into())
}

/// Dialer side: accepts only the server certificate whose key is pinned for
/// the address we dialed.
#[derive(Debug)]
pub(crate) struct PinnedServerVerifier {
    expected: PublicKey,
    counters: Arc<Counters>,
}

impl ServerCertVerifier for PinnedServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, TlsError> {
        match certificate_key(end_entity) {
            Ok(key) if key == self.expected => Ok(ServerCertVerified::assertion()),
            Ok(key) => {
                self.counters.handshake_rejected.increment();
                tracing::warn!(expected = %self.expected.short(), presented = %key.short(),
                    "server presented a different key than pinned: refused");
                Err(TlsError::InvalidCertificate(
                    CertificateError::ApplicationVerificationFailure,
                ))
            }
            Err(rejection) => {
                self.counters.handshake_rejected.increment();
                tracing::warn!(?rejection, "server certificate refused");
                Err(rejection.into())
            }
        }
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        tls12_refused()
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        verify_handshake_signature(message, cert, dss, Some(self.expected)).inspect_err(|_| {
            self.counters.handshake_rejected.increment();
        })
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        SCHEMES.to_vec()
    }
}

/// Listener side: accepts any valid Ed25519 certificate. Which keys may use
/// which ALPN is decided right after the handshake (see `mod.rs`), because a
/// rustls verifier does not see the negotiated ALPN; no byte of a connection
/// is read before that decision.
#[derive(Debug)]
pub(crate) struct Ed25519ClientVerifier {
    counters: Arc<Counters>,
}

impl ClientCertVerifier for Ed25519ClientVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, TlsError> {
        match certificate_key(end_entity) {
            Ok(_) => Ok(ClientCertVerified::assertion()),
            Err(rejection) => {
                self.counters.handshake_rejected.increment();
                tracing::debug!(?rejection, "client certificate refused");
                Err(rejection.into())
            }
        }
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        tls12_refused()
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        verify_handshake_signature(message, cert, dss, None).inspect_err(|_| {
            self.counters.handshake_rejected.increment();
        })
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        SCHEMES.to_vec()
    }
}

/// TLS for the listening side of an endpoint: both ALPNs, mandatory client
/// certificates, TLS 1.3 only.
pub(crate) fn server_crypto(
    identity: &Arc<CertifiedKey>,
    counters: &Arc<Counters>,
) -> Result<QuicServerConfig, TransportError> {
    let verifier = Arc::new(Ed25519ClientVerifier {
        counters: counters.clone(),
    });
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|source| TransportError::Tls { source })?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(Arc::new(SingleCertAndKey::from(identity.clone())));
    config.alpn_protocols = vec![ALPN_PEER.to_vec(), ALPN_CLIENT.to_vec()];
    config.session_storage = Arc::new(NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    QuicServerConfig::try_from(config).map_err(|source| TransportError::QuicCrypto { source })
}

/// TLS for dialing a server whose key is `expected`, over `alpn`.
pub(crate) fn client_crypto(
    identity: &Arc<CertifiedKey>,
    expected: PublicKey,
    alpn: &[u8],
    counters: &Arc<Counters>,
) -> Result<QuicClientConfig, TransportError> {
    let verifier = Arc::new(PinnedServerVerifier {
        expected,
        counters: counters.clone(),
    });
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|source| TransportError::Tls { source })?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_cert_resolver(Arc::new(SingleCertAndKey::from(identity.clone())));
    config.alpn_protocols = vec![alpn.to_vec()];
    config.resumption = Resumption::disabled();
    QuicClientConfig::try_from(config).map_err(|source| TransportError::QuicCrypto { source })
}

/// The key a connection's peer proved in the handshake, if it presented a
/// certificate our verifiers accepted.
pub(crate) fn connection_key(connection: &quinn::Connection) -> Option<PublicKey> {
    let identity = connection.peer_identity()?;
    let chain = identity.downcast::<Vec<CertificateDer<'static>>>().ok()?;
    certificate_key(chain.first()?).ok()
}

/// The ALPN a connection negotiated.
pub(crate) fn connection_alpn(connection: &quinn::Connection) -> Option<Vec<u8>> {
    let data = connection.handshake_data()?;
    let data = data
        .downcast::<quinn::crypto::rustls::HandshakeData>()
        .ok()?;
    data.protocol
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The certificate built for a key carries exactly that key, as read back
    /// by the DER parser the verifiers use.
    #[test]
    fn certificate_carries_the_identity_key() {
        for seed in [[0u8; 32], [7; 32], [255; 32]] {
            let key = KeyPair::from_seed(seed);
            let certified = certified_key(&key).unwrap();
            let certificate = certified.cert.first().unwrap();
            assert_eq!(certificate_key(certificate), Ok(key.public()));
        }
    }

    /// Non-Ed25519 SPKIs, truncated or padded keys, weak keys and garbage
    /// certificates are refused without panicking.
    #[test]
    fn bad_keys_and_certificates_are_refused() {
        let key = KeyPair::from_seed([9; 32]).public();
        let mut good = ED25519_SPKI_PREFIX.to_vec();
        good.extend_from_slice(&key.0);
        assert_eq!(spki_key(&good), Ok(key));
        assert_eq!(
            spki_key(&good[..good.len() - 1]),
            Err(CertificateRejection::NotEd25519)
        );
        let mut long = good.clone();
        long.push(0);
        assert_eq!(spki_key(&long), Err(CertificateRejection::NotEd25519));
        // Same shape, Ed448's OID (1.3.101.113).
        let mut other = good.clone();
        other[8] = 0x71;
        assert_eq!(spki_key(&other), Err(CertificateRejection::NotEd25519));
        // The identity point: small order.
        let mut weak = ED25519_SPKI_PREFIX.to_vec();
        let mut identity = [0u8; 32];
        identity[0] = 1;
        weak.extend_from_slice(&identity);
        assert_eq!(spki_key(&weak), Err(CertificateRejection::WeakKey));

        for garbage in [&b""[..], &[0x30, 0x82, 0xff, 0xff][..], &good[..]] {
            assert_eq!(
                certificate_key(&CertificateDer::from(garbage)),
                Err(CertificateRejection::Malformed)
            );
        }
    }

    /// A certificate that merely *contains* a committee key's SPKI somewhere
    /// (here in an extension) while its real subject key is another
    /// one is attributed to the real key: no byte-pattern search.
    #[test]
    fn embedded_key_bytes_do_not_confuse_the_parser() {
        let victim = KeyPair::from_seed([1; 32]).public();
        let attacker = KeyPair::from_seed([2; 32]);
        let mut spki = ED25519_SPKI_PREFIX.to_vec();
        spki.extend_from_slice(&victim.0);
        let mut seed_der = PKCS8_V2_PREFIX.to_vec();
        seed_der.extend_from_slice(attacker.secret_seed().as_ref());
        seed_der.extend_from_slice(&PKCS8_V2_MIDDLE);
        seed_der.extend_from_slice(&attacker.public().0);
        let rcgen_key = rcgen::KeyPair::from_pkcs8_der_and_sign_algo(
            &PrivatePkcs8KeyDer::from(seed_der.as_slice()),
            &rcgen::PKCS_ED25519,
        )
        .unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        // The victim's complete SPKI, byte for byte, inside an extension that
        // precedes nothing we read: a pattern search would find it.
        params.custom_extensions = vec![rcgen::CustomExtension::from_oid_content(
            &[1, 3, 6, 1, 4, 1, 55555, 1],
            spki.clone(),
        )];
        let certificate = params.self_signed(&rcgen_key).unwrap();
        assert_eq!(certificate_key(certificate.der()), Ok(attacker.public()));
    }
}
