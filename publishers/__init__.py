"""Publishers: build and store revocation artefacts (CRLs, pre-signed OCSP responses)."""
