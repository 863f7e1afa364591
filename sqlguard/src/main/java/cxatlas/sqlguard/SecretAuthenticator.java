package cxatlas.sqlguard;

import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.security.MessageDigest;
import javax.security.sasl.AuthenticationException;
import org.apache.hadoop.conf.Configurable;
import org.apache.hadoop.conf.Configuration;
import org.apache.hive.service.auth.PasswdAuthenticationProvider;

/**
 * HiveServer2 {@code CUSTOM} authentication of {@code cxatlas sql-server}: the password must be the data root's
 * secret, read from the file the system property (or setting) {@code cxatlas.sqlserver.secret.file} names (readable by its owner only). Any user
 * name is accepted (and logged by the server as the session's user); the secret is never logged.
 */
public final class SecretAuthenticator implements PasswdAuthenticationProvider, Configurable {
    public static final String SECRET_FILE = "cxatlas.sqlserver.secret.file";
    private Configuration conf;

    @Override
    public void setConf(Configuration configuration) {
        this.conf = configuration;
    }

    @Override
    public Configuration getConf() {
        return conf;
    }

    @Override
    public void Authenticate(String user, String password) throws AuthenticationException {
        // HiveServer2 builds the provider with a fresh HiveConf (hive-site.xml and Java system properties only), so
        // cxatlas sql-server sets both this class and the secret file as system properties of its JVM.
        String file = conf == null ? null : conf.get(SECRET_FILE);
        if (file == null || file.isEmpty()) {
            file = System.getProperty(SECRET_FILE);
        }
        if (file == null || file.isEmpty()) {
            throw new AuthenticationException("cxatlas sql-server: no secret file configured (" + SECRET_FILE + ")");
        }
        byte[] expected;
        try {
            expected = Files.readString(Path.of(file), StandardCharsets.UTF_8).strip().getBytes(StandardCharsets.UTF_8);
        } catch (IOException e) {
            throw new AuthenticationException("cxatlas sql-server: cannot read the secret file " + file);
        }
        byte[] given = password == null ? new byte[0] : password.getBytes(StandardCharsets.UTF_8);
        if (expected.length == 0 || !MessageDigest.isEqual(expected, given)) {
            throw new AuthenticationException("cxatlas sql-server: wrong password for user " + user);
        }
    }
}
