// The counter service of examples/counter.py, on the JVM: GET / answers the next value of
// an in-memory counter; the heap holds HEAP_MIB of live objects (a warm cache), so a
// doze or a sleep has a JVM-sized memory to deal with. For bench/measure.py's doze
// section (the JVM row), built into an image from the host's JDK.
import com.sun.net.httpserver.HttpServer;
import java.io.OutputStream;
import java.net.InetSocketAddress;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.atomic.AtomicLong;

public class Counter {
    static final List<long[]> CACHE = new ArrayList<>();

    public static void main(String[] args) throws Exception {
        int mib = Integer.parseInt(System.getenv().getOrDefault("HEAP_MIB", "200"));
        int port = Integer.parseInt(System.getenv().getOrDefault("PORT", "8080"));
        // 1 MiB arrays of varied longs: compressible about as a real heap is, not zeros.
        for (int i = 0; i < mib; i++) {
            long[] a = new long[128 * 1024];
            for (int j = 0; j < a.length; j++) {
                a[j] = (long) i * 31 + (j % 1024) * 7919L;
            }
            CACHE.add(a);
        }
        AtomicLong count = new AtomicLong();
        HttpServer server = HttpServer.create(new InetSocketAddress(port), 128);
        server.createContext("/", ex -> {
            byte[] body = (count.incrementAndGet() + "\n").getBytes(StandardCharsets.UTF_8);
            ex.sendResponseHeaders(200, body.length);
            try (OutputStream os = ex.getResponseBody()) {
                os.write(body);
            }
        });
        server.start();
        System.out.println("counter listening on " + port + " with " + mib + " MiB of heap");
    }
}
