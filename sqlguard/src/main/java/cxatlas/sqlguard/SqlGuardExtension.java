package cxatlas.sqlguard;

import org.apache.spark.sql.SparkSession;
import org.apache.spark.sql.SparkSessionExtensions;
import org.apache.spark.sql.catalyst.plans.logical.LogicalPlan;
import scala.Function1;
import scala.runtime.AbstractFunction1;
import scala.runtime.BoxedUnit;

/**
 * {@code spark.sql.extensions=cxatlas.sqlguard.SqlGuardExtension}: adds {@link SqlGuard} as a check rule, run by the
 * analyser on every analysed plan of every session of the JVM (each JDBC client of the Thrift server has its own).
 * Set only by {@code cxatlas sql-server}; the jobs never load it.
 */
public final class SqlGuardExtension extends AbstractFunction1<SparkSessionExtensions, BoxedUnit> {
    @Override
    public BoxedUnit apply(SparkSessionExtensions extensions) {
        extensions.injectCheckRule(new AbstractFunction1<SparkSession, Function1<LogicalPlan, BoxedUnit>>() {
            @Override
            public Function1<LogicalPlan, BoxedUnit> apply(SparkSession session) {
                return new SqlGuard(session.sparkContext().getConf());
            }
        });
        return BoxedUnit.UNIT;
    }
}
