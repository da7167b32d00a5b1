// A long-running PKIX relying party for the enforcement load test (loadtests/enforcement_java.py).
//
//   javac -d OUT RevocationCheck.java
//   java -Dcom.sun.security.enableCRLDP=true -cp OUT RevocationCheck crl|ocsp ROOT_PEM ISSUING_PEM
//
// Like a Tomcat that validates client certificates, one JVM lives for the whole run (so the JDK's
// own caches behave as they would in production). Each stdin line "ID LEAF_PEM" asks it to validate
// the path LEAF -> ISSUING against the trust anchor ROOT with CertPathValidator("PKIX") and a
// PKIXRevocationChecker; it answers one stdout line per request, in completion order:
//   "ID ok" | "ID revoked MESSAGE" | "ID error MESSAGE"
// Modes:
//   crl   PREFER_CRLS + NO_FALLBACK: CRLs fetched from each certificate's CRL distribution point
//         (needs -Dcom.sun.security.enableCRLDP=true); both the leaf and the issuing CA are checked.
//   ocsp  OCSP first (the default) + NO_FALLBACK, responder URL from the leaf's AIA; ONLY_END_ENTITY,
//         because the issuing CA's certificate names no OCSP responder.
// The first line written is "ready JAVA_VERSION".

import java.io.BufferedReader;
import java.io.FileInputStream;
import java.io.InputStream;
import java.io.InputStreamReader;
import java.io.PrintStream;
import java.nio.charset.StandardCharsets;
import java.security.cert.CertPath;
import java.security.cert.CertPathValidator;
import java.security.cert.CertPathValidatorException;
import java.security.cert.CertificateFactory;
import java.security.cert.PKIXParameters;
import java.security.cert.PKIXRevocationChecker;
import java.security.cert.TrustAnchor;
import java.security.cert.X509Certificate;
import java.util.EnumSet;
import java.util.List;
import java.util.Set;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;

public final class RevocationCheck {
    private static String mode;
    private static X509Certificate issuing;
    private static TrustAnchor anchor;
    private static final PrintStream OUT = new PrintStream(System.out, true, StandardCharsets.UTF_8);

    public static void main(String[] args) throws Exception {
        if (args.length != 3 || !(args[0].equals("crl") || args[0].equals("ocsp"))) {
            System.err.println("usage: RevocationCheck crl|ocsp ROOT_PEM ISSUING_PEM");
            System.exit(2);
        }
        mode = args[0];
        anchor = new TrustAnchor(load(args[1]), null);
        issuing = load(args[2]);
        ExecutorService pool = Executors.newFixedThreadPool(4);
        say("ready " + System.getProperty("java.version"));
        BufferedReader in = new BufferedReader(new InputStreamReader(System.in, StandardCharsets.UTF_8));
        String line;
        while ((line = in.readLine()) != null) {
            String[] parts = line.trim().split(" ", 2);
            if (parts.length != 2) {
                say("? error malformed request");
                continue;
            }
            pool.submit(() -> say(parts[0] + " " + check(parts[1])));
        }
        pool.shutdown();
    }

    private static synchronized void say(String text) {
        OUT.println(text);
    }

    private static X509Certificate load(String path) throws Exception {
        try (InputStream in = new FileInputStream(path)) {
            return (X509Certificate) CertificateFactory.getInstance("X.509").generateCertificate(in);
        }
    }

    private static String check(String leafPath) {
        try {
            X509Certificate leaf = load(leafPath);
            CertPath path = CertificateFactory.getInstance("X.509").generateCertPath(List.of(leaf, issuing));
            CertPathValidator validator = CertPathValidator.getInstance("PKIX");
            PKIXRevocationChecker checker = (PKIXRevocationChecker) validator.getRevocationChecker();
            Set<PKIXRevocationChecker.Option> options = EnumSet.of(PKIXRevocationChecker.Option.NO_FALLBACK);
            if (mode.equals("crl")) {
                options.add(PKIXRevocationChecker.Option.PREFER_CRLS);
            } else {
                options.add(PKIXRevocationChecker.Option.ONLY_END_ENTITY);
            }
            checker.setOptions(options);
            PKIXParameters params = new PKIXParameters(Set.of(anchor));
            params.addCertPathChecker(checker);  // used instead of the default revocation checking
            validator.validate(path, params);
            return "ok";
        } catch (CertPathValidatorException e) {
            String kind = e.getReason() == CertPathValidatorException.BasicReason.REVOKED ? "revoked" : "error";
            return kind + " " + oneLine(e);
        } catch (Exception e) {
            return "error " + oneLine(e);
        }
    }

    private static String oneLine(Exception e) {
        String text = e.getClass().getSimpleName() + ": " + e.getMessage();
        return text.replace('\n', ' ').replace('\r', ' ');
    }
}
