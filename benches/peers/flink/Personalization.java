// The Flink peer of squall's topology `personalization`, version 1, for the side-by-side figures in
// benches/RESULTS.md. A Flink 2.0 DataStream job in a local MiniCluster:
//
//   KafkaSource (both topics, earliest -> the high watermarks at start; JSON parsed by Jackson in the
//   deserializer) -> enrich (track -> genre, ad -> category from an in-memory map per task, loaded
//   from the catalogue file the harness writes from the same CatalogueGen seed; missing -> "unknown")
//   -> keyBy(user) -> per-user keyed state: dedup of (kind, user, event_id) in MapState (24 h TTL)
//   and the v1 attributes in one ValueState -> discarding sink.
//
// v1 semantics (operators/src/attributes.rs): plays, skips (ms_played < 30000), genre_plays,
// top_genres (up to 3 by plays, ties by name ascending), ad_impressions, ad_categories,
// last_seen_ts (largest ts of a counted event). A resent event id (same topic and user) counts once.
//
// Prints to stdout, for the harness (benches/src/bin/compare.rs):
//   flink_first epoch_ms=..            when the first record is deserialized
//   flink_done events=N epoch_ms=..    when N records (counted or resent) reached the keyed state
// With --out DIR, every user's final attributes are written as JSON lines to DIR/part-<subtask>
// when the (bounded) input ends, for the oracle check.
//
// Build and run: benches/peers/flink/build.sh, then benches/peers/flink/run.sh --help.

import java.io.BufferedWriter;
import java.io.File;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Paths;
import java.time.Duration;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.Iterator;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.concurrent.atomic.AtomicBoolean;
import java.util.concurrent.atomic.AtomicLong;

import org.apache.flink.api.common.eventtime.WatermarkStrategy;
import org.apache.flink.api.common.functions.OpenContext;
import org.apache.flink.api.common.functions.RichMapFunction;
import org.apache.flink.api.common.state.MapState;
import org.apache.flink.api.common.state.MapStateDescriptor;
import org.apache.flink.api.common.state.StateTtlConfig;
import org.apache.flink.api.common.state.ValueState;
import org.apache.flink.api.common.state.ValueStateDescriptor;
import org.apache.flink.api.common.typeinfo.TypeInformation;
import org.apache.flink.api.common.typeinfo.Types;
import org.apache.flink.configuration.CheckpointingOptions;
import org.apache.flink.configuration.Configuration;
import org.apache.flink.configuration.StateBackendOptions;
import org.apache.flink.connector.kafka.source.KafkaSource;
import org.apache.flink.connector.kafka.source.enumerator.initializer.OffsetsInitializer;
import org.apache.flink.connector.kafka.source.reader.deserializer.KafkaRecordDeserializationSchema;
import org.apache.flink.core.execution.CheckpointingMode;
import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.databind.DeserializationFeature;
import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.databind.JsonNode;
import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.databind.ObjectMapper;
import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.databind.ObjectReader;
import org.apache.flink.streaming.api.environment.StreamExecutionEnvironment;
import org.apache.flink.streaming.api.functions.KeyedProcessFunction;
import org.apache.flink.streaming.api.functions.sink.v2.DiscardingSink;
import org.apache.flink.util.Collector;
import org.apache.kafka.clients.consumer.ConsumerRecord;

public class Personalization {
    /** Plays shorter than this are skips (squall_operators::attributes::SKIP_BELOW_MS). */
    static final long SKIP_BELOW_MS = 30_000;

    // Progress markers shared by all subtasks: the MiniCluster runs them all in this JVM.
    static final AtomicBoolean FIRST = new AtomicBoolean();
    static final AtomicLong PROCESSED = new AtomicLong();

    /** A decoded event; `value` is the genre or category once enriched. A Flink POJO. */
    public static class Event {
        public boolean ad;
        public String eventId;
        public String userId;
        /** track_id or ad_id. */
        public String item;
        public long msPlayed;
        public long ts;
        public String value;

        public Event() {}
    }

    /** The JSON producers write (`{"event_id","user_id","track_id","ms_played","ts"}` or `"ad_id"`). */
    public static class Raw {
        public String event_id;
        public String user_id;
        public String track_id;
        public String ad_id;
        public Long ms_played;
        public Long ts;
    }

    /** Per-user v1 state. A Flink POJO (Flink 2.0 serializes its HashMap fields natively). */
    public static class Attrs {
        public int plays;
        public int skips;
        public int ads;
        public long lastSeenTs;
        public HashMap<String, Integer> genres = new HashMap<>();
        public HashMap<String, Integer> categories = new HashMap<>();

        public Attrs() {}
    }

    /** JSON parse in the source's deserializer, as a Flink job reads JSON from Kafka. Records that
     *  do not parse or lack a field are dropped and counted (squall dead-letters them). */
    static class Decode implements KafkaRecordDeserializationSchema<Event> {
        final String adTopic;
        transient ObjectReader reader;

        Decode(String adTopic) {
            this.adTopic = adTopic;
        }

        @Override
        public void deserialize(ConsumerRecord<byte[], byte[]> record, Collector<Event> out) {
            if (FIRST.compareAndSet(false, true)) {
                System.out.println("flink_first epoch_ms=" + System.currentTimeMillis());
                System.out.flush();
            }
            if (reader == null) {
                reader = new ObjectMapper()
                        .configure(DeserializationFeature.FAIL_ON_UNKNOWN_PROPERTIES, false)
                        .readerFor(Raw.class);
            }
            Raw r;
            try {
                r = reader.readValue(record.value());
            } catch (Exception e) {
                bad();
                return;
            }
            boolean ad = record.topic().equals(adTopic);
            if (r == null || r.event_id == null || r.user_id == null || (ad ? r.ad_id : r.track_id) == null
                    || r.ts == null || (!ad && (r.ms_played == null || r.ms_played < 0))) {
                bad();
                return;
            }
            Event e = new Event();
            e.ad = ad;
            e.item = ad ? r.ad_id : r.track_id;
            e.eventId = r.event_id;
            e.userId = r.user_id;
            e.msPlayed = e.ad ? 0 : r.ms_played;
            e.ts = r.ts;
            out.collect(e);
        }

        @Override
        public TypeInformation<Event> getProducedType() {
            return TypeInformation.of(Event.class);
        }
    }

    static final AtomicLong BAD = new AtomicLong();

    static void bad() {
        // Not counted as processed, as squall counts dead letters apart (the harness produces none).
        BAD.incrementAndGet();
    }

    /** Enrichment from the catalogue, held in memory by every parallel instance (Flink's FULL
     *  lookup cache, loaded once at open). */
    static class Enrich extends RichMapFunction<Event, Event> {
        final String path;
        transient HashMap<String, String> tracks;
        transient HashMap<String, String> ads;

        Enrich(String path) {
            this.path = path;
        }

        @Override
        public void open(OpenContext ctx) throws Exception {
            JsonNode root = new ObjectMapper().readTree(new File(path));
            tracks = table(root.get("tracks"));
            ads = table(root.get("ads"));
        }

        static HashMap<String, String> table(JsonNode node) {
            HashMap<String, String> m = new HashMap<>(node.size() * 2);
            for (Iterator<Map.Entry<String, JsonNode>> it = node.fields(); it.hasNext(); ) {
                Map.Entry<String, JsonNode> kv = it.next();
                m.put(kv.getKey(), kv.getValue().isNull() ? "unknown" : kv.getValue().asText());
            }
            return m;
        }

        @Override
        public Event map(Event e) {
            e.value = (e.ad ? ads : tracks).getOrDefault(e.item, "unknown");
            return e;
        }
    }

    /** Dedup, then the v1 attributes, per user. */
    static class Maintain extends KeyedProcessFunction<String, Event, Void> {
        final long expected;
        final String outDir;
        transient MapState<String, Boolean> seenSongs;
        transient MapState<String, Boolean> seenAds;
        transient ValueState<Attrs> attrs;
        transient BufferedWriter out;
        transient ObjectMapper json;

        Maintain(long expected, String outDir) {
            this.expected = expected;
            this.outDir = outDir;
        }

        @Override
        public void open(OpenContext ctx) throws Exception {
            // squall keeps ids for 24 h of event time; Flink's TTL is processing time. Expired ids
            // are dropped when read and left out of full snapshots. Not the default incremental
            // cleanup: with per-user MapState each of its steps copies a user's whole map, which
            // took over half of this job's CPU (JFR profile in benches/RESULTS.md).
            StateTtlConfig ttl = StateTtlConfig.newBuilder(Duration.ofHours(24))
                    .disableCleanupInBackground()
                    .cleanupFullSnapshot()
                    .build();
            MapStateDescriptor<String, Boolean> songs = new MapStateDescriptor<>("seen-songs", Types.STRING, Types.BOOLEAN);
            MapStateDescriptor<String, Boolean> ads = new MapStateDescriptor<>("seen-ads", Types.STRING, Types.BOOLEAN);
            songs.enableTimeToLive(ttl);
            ads.enableTimeToLive(ttl);
            seenSongs = getRuntimeContext().getMapState(songs);
            seenAds = getRuntimeContext().getMapState(ads);
            attrs = getRuntimeContext().getState(new ValueStateDescriptor<>("attrs", Attrs.class));
            if (outDir != null) {
                int subtask = getRuntimeContext().getTaskInfo().getIndexOfThisSubtask();
                out = Files.newBufferedWriter(Paths.get(outDir, "part-" + subtask), StandardCharsets.UTF_8);
                json = new ObjectMapper();
            }
        }

        @Override
        public void processElement(Event e, Context ctx, Collector<Void> collector) throws Exception {
            MapState<String, Boolean> seen = e.ad ? seenAds : seenSongs;
            if (!seen.contains(e.eventId)) {
                seen.put(e.eventId, Boolean.TRUE);
                Attrs a = attrs.value();
                if (a == null) {
                    a = new Attrs();
                    a.lastSeenTs = e.ts;
                    if (out != null) {
                        // Fires when the bounded input ends (the final watermark): write the user out.
                        ctx.timerService().registerEventTimeTimer(Long.MAX_VALUE - 1);
                    }
                }
                a.lastSeenTs = Math.max(a.lastSeenTs, e.ts);
                if (e.ad) {
                    a.ads++;
                    a.categories.merge(e.value, 1, Integer::sum);
                } else {
                    a.plays++;
                    if (e.msPlayed < SKIP_BELOW_MS) {
                        a.skips++;
                    }
                    a.genres.merge(e.value, 1, Integer::sum);
                }
                attrs.update(a);
            }
            if (PROCESSED.incrementAndGet() == expected) {
                System.out.println("flink_done events=" + expected + " epoch_ms=" + System.currentTimeMillis());
                System.out.flush();
            }
        }

        @Override
        public void onTimer(long t, OnTimerContext ctx, Collector<Void> collector) throws Exception {
            Attrs a = attrs.value();
            Map<String, Object> m = new LinkedHashMap<>();
            m.put("user_id", ctx.getCurrentKey());
            m.put("plays", a.plays);
            m.put("skips", a.skips);
            m.put("genre_plays", a.genres);
            m.put("top_genres", top(a.genres, 3));
            m.put("ad_impressions", a.ads);
            m.put("ad_categories", a.categories);
            m.put("last_seen_ts", a.lastSeenTs);
            out.write(json.writeValueAsString(m));
            out.write('\n');
        }

        @Override
        public void close() throws Exception {
            if (out != null) {
                out.close();
            }
        }
    }

    /** Up to n genres by plays, descending; ties by name ascending. */
    static List<String> top(Map<String, Integer> counts, int n) {
        List<Map.Entry<String, Integer>> ranked = new ArrayList<>(counts.entrySet());
        ranked.sort((x, y) -> y.getValue().equals(x.getValue())
                ? x.getKey().compareTo(y.getKey())
                : Integer.compare(y.getValue(), x.getValue()));
        List<String> out = new ArrayList<>();
        for (int i = 0; i < Math.min(n, ranked.size()); i++) {
            out.add(ranked.get(i).getKey());
        }
        return out;
    }

    static String usage() {
        return "usage: Personalization --brokers H:P --song-topic T --ad-topic T --catalogue FILE.json --events N\n"
                + "  [--parallelism 1] [--group ID] [--fetch-max-wait-ms 10]\n"
                + "  [--checkpoint-dir DIR (exactly-once checkpoints to file://DIR)] [--checkpoint-interval-ms 1000]\n"
                + "  [--out DIR (final attributes, JSON lines)]";
    }

    public static void main(String[] argv) throws Exception {
        Map<String, String> a = new HashMap<>();
        for (int i = 0; i < argv.length; i++) {
            if (argv[i].equals("--help") || !argv[i].startsWith("--") || i + 1 >= argv.length) {
                System.err.println(usage());
                System.exit(argv[i].equals("--help") ? 0 : 2);
            }
            a.put(argv[i].substring(2), argv[++i]);
        }
        for (String k : List.of("brokers", "song-topic", "ad-topic", "catalogue", "events")) {
            if (!a.containsKey(k)) {
                System.err.println("missing --" + k + "\n" + usage());
                System.exit(2);
            }
        }
        int p = Integer.parseInt(a.getOrDefault("parallelism", "1"));
        long events = Long.parseLong(a.get("events"));
        String outDir = a.get("out");

        Configuration conf = new Configuration();
        // The heap state backend: flink-dist 2.0 ships no RocksDB/ForSt backend (see RESULTS.md).
        conf.set(StateBackendOptions.STATE_BACKEND, "hashmap");
        String ckDir = a.get("checkpoint-dir");
        if (ckDir != null) {
            conf.set(CheckpointingOptions.CHECKPOINT_STORAGE, "filesystem");
            conf.set(CheckpointingOptions.CHECKPOINTS_DIRECTORY, new File(ckDir).toURI().toString());
        }
        StreamExecutionEnvironment env = StreamExecutionEnvironment.createLocalEnvironment(p, conf);
        // No defensive copy of each record between chained operators (source -> enrich): none of
        // them keeps a reference to a record it has passed on.
        env.getConfig().enableObjectReuse();
        if (ckDir != null) {
            env.enableCheckpointing(Long.parseLong(a.getOrDefault("checkpoint-interval-ms", "1000")),
                    CheckpointingMode.EXACTLY_ONCE);
        }

        KafkaSource<Event> source = KafkaSource.<Event>builder()
                .setBootstrapServers(a.get("brokers"))
                .setTopics(a.get("song-topic"), a.get("ad-topic"))
                .setGroupId(a.getOrDefault("group", "flink-personalization"))
                .setStartingOffsets(OffsetsInitializer.earliest())
                // Ends at the high watermarks seen at start: the harness pre-produces the events.
                .setBounded(OffsetsInitializer.latest())
                .setDeserializer(new Decode(a.get("ad-topic")))
                // The same as squall's fetch.wait.max.ms: nisshi makes a fetch naming only drained
                // partitions wait the whole of it (see /work/shared/ENVIRONMENT.md).
                .setProperty("fetch.max.wait.ms", a.getOrDefault("fetch-max-wait-ms", "10"))
                .build();

        env.fromSource(source, WatermarkStrategy.noWatermarks(), "kafka")
                .map(new Enrich(a.get("catalogue")))
                .name("enrich")
                .keyBy(e -> e.userId, Types.STRING)
                .process(new Maintain(events, outDir))
                .name("attributes")
                .sinkTo(new DiscardingSink<>());
        long t0 = System.currentTimeMillis();
        env.execute("personalization-v1");
        System.out.println("flink_finished processed=" + PROCESSED.get() + " bad=" + BAD.get()
                + " job_ms=" + (System.currentTimeMillis() - t0));
    }
}
