// BouncyCastle's SM2 key exchange (org.bouncycastle.crypto.agreement.SM2KeyExchange) on
// sm2p256v1, driven by claimlink-gm's interop test: an independent implementation of
// GB/T 32918.3 to agree with.
//
// java -cp bcprov.jar:. SmKex ROLE KLEN_BITS OWN_D OWN_R OWN_ID PEER_PUB PEER_EPH PEER_ID [S_B]
//   ROLE: initiator or responder; keys: hex scalars and hex SEC1 uncompressed points.
// Prints the key and, for a responder, S_B and the S_A it expects; for an initiator given the
// responder's S_B, the key and S_A (BouncyCastle checks S_B first).
import java.math.BigInteger;
import org.bouncycastle.asn1.gm.GMNamedCurves;
import org.bouncycastle.asn1.x9.X9ECParameters;
import org.bouncycastle.crypto.agreement.SM2KeyExchange;
import org.bouncycastle.crypto.params.*;
import org.bouncycastle.util.encoders.Hex;

public class SmKex {
    public static void main(String[] a) {
        X9ECParameters x9 = GMNamedCurves.getByName("sm2p256v1");
        ECDomainParameters dom = new ECDomainParameters(x9.getCurve(), x9.getG(), x9.getN(), x9.getH());
        boolean initiator = a[0].equals("initiator");
        int klen = Integer.parseInt(a[1]);
        ECPrivateKeyParameters d = new ECPrivateKeyParameters(new BigInteger(a[2], 16), dom);
        ECPrivateKeyParameters r = new ECPrivateKeyParameters(new BigInteger(a[3], 16), dom);
        ECPublicKeyParameters p = new ECPublicKeyParameters(x9.getCurve().decodePoint(Hex.decode(a[5])), dom);
        ECPublicKeyParameters e = new ECPublicKeyParameters(x9.getCurve().decodePoint(Hex.decode(a[6])), dom);
        SM2KeyExchange x = new SM2KeyExchange();
        x.init(new ParametersWithID(new SM2KeyExchangePrivateParameters(initiator, d, r), a[4].getBytes()));
        ParametersWithID peer = new ParametersWithID(new SM2KeyExchangePublicParameters(p, e), a[7].getBytes());
        byte[] tag = a.length > 8 ? Hex.decode(a[8]) : null;
        if (initiator && tag == null) {
            System.out.println(Hex.toHexString(x.calculateKey(klen, peer)));
            return;
        }
        for (byte[] v : x.calculateKeyWithConfirmation(klen, tag, peer)) {
            System.out.println(Hex.toHexString(v));
        }
    }
}
