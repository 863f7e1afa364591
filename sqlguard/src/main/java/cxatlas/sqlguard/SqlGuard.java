package cxatlas.sqlguard;

import java.lang.reflect.Method;
import java.util.List;
import java.util.Locale;
import java.util.Set;
import java.util.concurrent.atomic.AtomicBoolean;
import java.util.regex.Pattern;
import org.apache.hadoop.fs.Path;
import org.apache.spark.SparkConf;
import org.apache.spark.sql.catalyst.catalog.CatalogTable;
import org.apache.spark.sql.catalyst.catalog.HiveTableRelation;
import org.apache.spark.sql.catalyst.expressions.Expression;
import org.apache.spark.sql.catalyst.expressions.SubqueryExpression;
import org.apache.spark.sql.catalyst.plans.logical.Command;
import org.apache.spark.sql.catalyst.plans.logical.LogicalPlan;
import org.apache.spark.sql.connector.catalog.Identifier;
import org.apache.spark.sql.execution.command.SetCommand;
import org.apache.spark.sql.execution.datasources.HadoopFsRelation;
import org.apache.spark.sql.execution.datasources.LogicalRelation;
import org.apache.spark.sql.execution.datasources.v2.DataSourceV2Relation;
import scala.Option;
import scala.Tuple2;
import scala.jdk.javaapi.CollectionConverters;
import scala.runtime.AbstractFunction1;
import scala.runtime.BoxedUnit;

/**
 * The check rule of {@code cxatlas sql-server}: an analysed plan runs only when every part of it is allowed.
 *
 * <p>Allowed, by default: queries (the operators of {@link #QUERY_OPERATORS}) whose every data source is a table or
 * view of the cxatlas database ({@code spark.cxatlas.sqlguard.database}), a literal row, or (for Delta's own reads
 * of its log and data files) a file under the tables folder ({@code spark.cxatlas.sqlguard.tablesRoot}); the
 * read-only commands of {@link #READ_COMMANDS} (SHOW, DESCRIBE, USE, SET without a value). With
 * {@code spark.cxatlas.sqlguard.allowWrites=true}, also the row writes of {@link #WRITE_COMMANDS} into existing
 * tables of that database. Everything else is refused: script transformation (TRANSFORM ... USING), any other
 * command (DDL, ADD JAR, CREATE FUNCTION, SET with a value, INSERT OVERWRITE DIRECTORY, CACHE, EXPLAIN), files read by
 * path, and expressions outside Spark's and Delta's built-ins or that call Java by reflection (reflect,
 * java_method).
 *
 * <p>Settings come from the SparkConf the server started with, which no client can change (SET cannot reach
 * static settings, and every SET with a value is refused anyway). The guard starts checking when the server arms
 * it ({@link #arm()}), after cxatlas registered its tables and views and before the Thrift server accepts clients.
 */
public final class SqlGuard extends AbstractFunction1<LogicalPlan, BoxedUnit> {
    private static final AtomicBoolean ARMED = new AtomicBoolean(false);
    private static final Pattern SECRET_KEY = Pattern.compile("(?i)secret|password|token|credential|access.?key");

    static final Set<String> QUERY_OPERATORS = Set.of(
            "Project", "Filter", "Aggregate", "Join", "Sort", "GlobalLimit", "LocalLimit", "Offset", "Tail", "Union",
            "Intersect", "Except", "Distinct", "Deduplicate", "Window", "WindowGroupLimit", "SubqueryAlias", "View",
            "Generate", "Expand", "Sample", "Repartition", "RepartitionByExpression", "RebalancePartitions",
            "WithCTE", "CTERelationDef", "ReturnAnswer", "Subquery", "ResolvedHint", "LateralJoin", "AsOfJoin",
            "CollectMetrics", "DeserializeToObject", "SerializeFromObject", "MapPartitions", "MapElements",
            "AppendColumns", "AppendColumnsWithObject", "TypedFilter", "MapGroups", "CoGroup");
    static final Set<String> LEAVES = Set.of(
            "LocalRelation", "OneRowRelation", "Range", "LogicalRDD", "ExternalRDD", "CTERelationRef",
            "EmptyRelation");
    static final Set<String> READ_COMMANDS = Set.of(
            "ShowTables", "ShowTablesCommand", "ShowTableExtended", "ShowViews", "ShowViewsCommand",
            "ShowNamespaces", "ShowNamespacesCommand", "ShowColumns", "ShowColumnsCommand", "ShowCatalogs",
            "ShowCurrentNamespace", "ShowCurrentNamespaceCommand", "ShowFunctions", "ShowFunctionsCommand",
            "ShowTableProperties", "ShowTablePropertiesCommand", "ShowCreateTable", "ShowCreateTableCommand",
            "ShowPartitions", "ShowPartitionsCommand", "DescribeRelation", "DescribeTableCommand",
            "DescribeColumn", "DescribeColumnCommand", "DescribeNamespace", "DescribeDatabaseCommand",
            "DescribeFunction", "DescribeFunctionCommand", "DescribeDeltaHistory", "DescribeDeltaHistoryCommand",
            "DescribeDeltaDetailCommand", "SetCatalogAndNamespace", "SetNamespaceCommand", "SetCatalogCommand",
            "SetCommand");
    static final Set<String> WRITE_COMMANDS = Set.of(
            "AppendData", "OverwriteByExpression", "OverwritePartitionsDynamic", "DeleteFromTable", "UpdateTable",
            "MergeIntoTable", "ReplaceData", "WriteDelta", "InsertIntoHadoopFsRelationCommand", "DeleteCommand",
            "UpdateCommand", "MergeIntoCommand", "WriteIntoDelta", "DeltaDelete", "DeltaUpdateTable",
            "DeltaMergeInto", "DeleteFromTableCommand");
    static final List<String> EXPRESSION_PACKAGES = List.of(
            "org.apache.spark.sql.catalyst.expressions.", "org.apache.spark.sql.delta.",
            "org.apache.spark.sql.catalyst.plans.logical.DeltaMerge");  // Delta's MERGE clauses and actions live there
    static final Set<String> REFUSED_EXPRESSIONS = Set.of("CallMethodViaReflection");

    private final String database;
    private final boolean allowWrites;
    private final String tablesRoot;

    public SqlGuard(SparkConf conf) {
        this.database = conf.get("spark.cxatlas.sqlguard.database", "cxatlas").toLowerCase(Locale.ROOT);
        this.allowWrites = conf.getBoolean("spark.cxatlas.sqlguard.allowWrites", false);
        String root = conf.get("spark.cxatlas.sqlguard.tablesRoot", "");
        this.tablesRoot = root.isEmpty() ? "" : normalise(root);
    }

    /** Start checking (called once by cxatlas sql-server, after it registered the catalog). */
    public static void arm() {
        ARMED.set(true);
    }

    public static boolean armed() {
        return ARMED.get();
    }

    @Override
    public BoxedUnit apply(LogicalPlan plan) {
        if (ARMED.get()) {
            check(plan);
        }
        return BoxedUnit.UNIT;
    }

    private static SecurityException refuse(String what) {
        return new SecurityException("cxatlas sql-server refuses " + what + " (read-only over the cxatlas database's"
                + " tables and views; README \"Security\")");
    }

    private static <T> List<T> list(scala.collection.Seq<T> seq) {
        return new java.util.ArrayList<>(CollectionConverters.asJava(seq));
    }

    void check(LogicalPlan plan) {
        String name = plan.getClass().getSimpleName();
        if (plan instanceof Command || READ_COMMANDS.contains(name) || WRITE_COMMANDS.contains(name)) {
            checkCommand(plan, name);
            return;
        }
        if (plan.children().isEmpty()) {
            checkLeaf(plan, name);
        } else if (!QUERY_OPERATORS.contains(name)) {
            throw refuse(name.equals("ScriptTransformation") || name.equals("HiveScriptTransformation")
                    ? "script transformation (TRANSFORM ... USING)" : "the operator " + name);
        }
        checkExpressions(plan);
        for (LogicalPlan child : list(plan.children())) {
            check(child);
        }
    }

    private void checkCommand(LogicalPlan plan, String name) {
        if (plan instanceof SetCommand) {
            Option<Tuple2<String, Option<String>>> kv = ((SetCommand) plan).kv();
            if (kv.isDefined() && kv.get()._2().isDefined()) {
                throw refuse("SET with a value (" + kv.get()._1() + ")");
            }
            if (kv.isDefined() && SECRET_KEY.matcher(kv.get()._1()).find()) {
                throw refuse("reading the setting " + kv.get()._1());
            }
            return;
        }
        if (READ_COMMANDS.contains(name)) {
            return;
        }
        if (!allowWrites || !WRITE_COMMANDS.contains(name)) {
            boolean write = WRITE_COMMANDS.contains(name);
            throw refuse("the command " + name + (write ? " (row writes need cxatlas sql-server --allow-writes)" : ""));
        }
        Object table = invoke(plan, "catalogTable");
        if (table instanceof Option && ((Option<?>) table).isDefined()) {
            checkTable(((CatalogTable) ((Option<?>) table).get()), name);
        }
        checkExpressions(plan);
        for (LogicalPlan child : list(plan.children())) {
            check(child);
        }
    }

    private static Object invoke(Object target, String method) {
        try {
            Method m = target.getClass().getMethod(method);
            return m.invoke(target);
        } catch (ReflectiveOperationException e) {
            return null;
        }
    }

    private void checkTable(CatalogTable table, String what) {
        Option<String> db = table.identifier().database();
        if (!db.isDefined() || !db.get().toLowerCase(Locale.ROOT).equals(database)) {
            throw refuse(what + " on " + table.identifier().unquotedString() + " (not in database " + database + ")");
        }
    }

    private void checkLeaf(LogicalPlan plan, String name) {
        if (LEAVES.contains(name)) {
            return;
        }
        if (plan instanceof LogicalRelation) {
            LogicalRelation relation = (LogicalRelation) plan;
            if (relation.catalogTable().isDefined()) {
                checkTable(relation.catalogTable().get(), "reading");
                return;
            }
            if (relation.relation() instanceof HadoopFsRelation && !tablesRoot.isEmpty()) {
                for (Path path : list(((HadoopFsRelation) relation.relation()).location().rootPaths())) {
                    String p = normalise(path.toString());
                    if (!(p.equals(tablesRoot) || p.startsWith(tablesRoot + "/"))) {
                        throw refuse("reading files by path (" + path + ")");
                    }
                }
                return;
            }
            throw refuse("reading a data source by path or options");
        }
        if (plan instanceof HiveTableRelation) {
            checkTable(((HiveTableRelation) plan).tableMeta(), "reading");
            return;
        }
        if (plan instanceof DataSourceV2Relation) {
            Option<Identifier> id = ((DataSourceV2Relation) plan).identifier();
            String[] ns = id.isDefined() ? id.get().namespace() : new String[0];
            if (ns.length == 0 || !ns[ns.length - 1].toLowerCase(Locale.ROOT).equals(database)) {
                throw refuse("reading " + (id.isDefined() ? id.get().toString() : "a table by path")
                        + " (not in database " + database + ")");
            }
            return;
        }
        throw refuse("the data source " + name);
    }

    private void checkExpressions(LogicalPlan plan) {
        for (Expression expression : list(plan.expressions())) {
            checkExpression(expression);
        }
    }

    private void checkExpression(Expression expression) {
        Class<?> cls = expression.getClass();
        String name = cls.getName();
        if (REFUSED_EXPRESSIONS.contains(cls.getSimpleName())) {
            throw refuse("calling Java methods by reflection (reflect, java_method)");
        }
        if (EXPRESSION_PACKAGES.stream().noneMatch(name::startsWith)) {
            throw refuse("the function " + cls.getSimpleName() + " (not a Spark or Delta built-in)");
        }
        if (expression instanceof SubqueryExpression) {
            check(((SubqueryExpression) expression).plan());
        }
        for (Expression child : list(expression.children())) {
            checkExpression(child);
        }
    }

    private static String normalise(String path) {
        String p = path.replaceFirst("^file:/+", "/").replaceAll("/+$", "");
        return new Path(p).toUri().normalize().toString();
    }
}
